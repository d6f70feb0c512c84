// What a Node.js application does with @azure/identity when its pod sets
// IDENTITY_ENDPOINT and IDENTITY_HEADER to the agent: ManagedIdentityCredential
// without and with a client ID, DefaultAzureCredential, and a client ID its
// ServiceAccount does not name. Prints one JSON line; each step reports
// its token or its error.
//
// Usage: node azure-identity.mjs RESOURCE OWN_CLIENT_ID OTHER_CLIENT_ID
import { DefaultAzureCredential, ManagedIdentityCredential } from '@azure/identity';
import { readFileSync } from 'node:fs';

const [resource, own, other] = process.argv.slice(2);
const version = (name) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version;

const out = { identity: version('@azure/identity'), msalNode: version('@azure/msal-node') };
async function get(name, cred, scope) {
  try {
    const t = await cred.getToken(scope);
    out[name] = { token: t.token, expiresOn: t.expiresOnTimestamp };
  } catch (err) {
    out[name] = { error: `${err.name}: ${err.message}` };
  }
}
await get('mi', new ManagedIdentityCredential(), `${resource}/.default`);
await get('mi_client', new ManagedIdentityCredential({ clientId: own }), `${resource}2/.default`);
await get('dac', new DefaultAzureCredential(), `${resource}3/.default`);
await get('other', new ManagedIdentityCredential({ clientId: other }), `${resource}4/.default`);
console.log(JSON.stringify(out));
