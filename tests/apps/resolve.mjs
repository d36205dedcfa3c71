// The apps' clients live in tests/apps (issue #15: "tests/apps/: each of the five apps' client
// code") but their npm packages (socket.io-client, ws) are the ones tests/js pins in its lock
// file: one set of packages, one `npm ci` in CI. Node resolves an `import` only from
// node_modules folders above the importing file (NODE_PATH is not used for ES modules), so
// this module, loaded with `node --import ./resolve.mjs` (tests/api/profiles.rs does), lets a
// bare import that is not found the usual way resolve from tests/js instead. Relative and
// `node:` imports are untouched; a package missing from tests/js still fails as it would.
import { register } from "node:module";
import { isMainThread } from "node:worker_threads";

const TESTS_JS = new URL("../js/package.json", import.meta.url).href;

// Hooks run on their own thread, which loads this file again: register once, from the main one.
if (isMainThread) register(import.meta.url);

export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (e) {
    const bare = !/^(\.|\/|[a-z][a-z0-9+.-]*:)/i.test(specifier);
    if (e?.code !== "ERR_MODULE_NOT_FOUND" || !bare) throw e;
    return next(specifier, { ...context, parentURL: TESTS_JS });
  }
}
