// What a Node.js application does with google-auth-library when its pod
// sets GCE_METADATA_HOST (and GCE_METADATA_IP) to the agent: detect the
// metadata server, read the project and the account, get an access token
// and an identity token. Prints one JSON line; exits non-zero on failure.
//
// Usage: node gcp-auth.mjs [audience]
import { GoogleAuth } from 'google-auth-library';
import { readFileSync } from 'node:fs';

const audience = process.argv[2] || 'https://svc.example';
const version = (name) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version;

const auth = new GoogleAuth({ scopes: ['https://www.googleapis.com/auth/cloud-platform'] });
const client = await auth.getClient();
const { token, res } = await client.getAccessToken();
const projectId = await auth.getProjectId();
const credentials = await auth.getCredentials();
const universe = await auth.getUniverseDomain();
// A pod that is its own federated principal gets no identity token (the
// agent answers 404 NoGoogleServiceAccount): report the error, go on.
let idToken, idError;
try {
  const idClient = await auth.getIdTokenClient(audience);
  idToken = await idClient.idTokenProvider.fetchIdToken(audience);
} catch (err) {
  idError = `${err.name}: ${err.message} ${err.response?.data ?? ''}`;
}
console.log(JSON.stringify({
  library: version('google-auth-library'),
  gcpMetadata: version('gcp-metadata'),
  client: client.constructor.name,
  token,
  expiry: client.credentials.expiry_date,
  projectId,
  email: credentials.client_email,
  universe,
  idToken,
  idError,
}));
