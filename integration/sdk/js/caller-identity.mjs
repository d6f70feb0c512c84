// caller-identity.mjs asks STS who the caller is, with credentials from the
// SDK's default provider chain, or with --provider=http from the container
// credentials provider alone. It prints the GetCallerIdentity result as JSON
// on stdout, like `aws sts get-caller-identity`. The integration tests run it
// inside a simulated pod with only AWS_CONTAINER_CREDENTIALS_FULL_URI set, so
// the agent is the only possible source of credentials.
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { fromHttp } from "@aws-sdk/credential-providers";

const useHttp = process.argv.includes("--provider=http");
const client = new STSClient(useHttp ? { credentials: fromHttp({}) } : {});
try {
  const out = await client.send(new GetCallerIdentityCommand({}));
  process.stdout.write(JSON.stringify({ UserId: out.UserId, Account: out.Account, Arn: out.Arn }) + "\n");
} catch (err) {
  process.stderr.write(`${err.name}: ${err.message}\n`);
  process.exit(1);
}
