#!/usr/bin/env node
// Example onnxrec client: asks a server for the top-k items of one user.
//
//   node recommend.js ADDRESS MODEL USER_ID [K]
//
// Prints one line per item, "ITEM_ID<TAB>SCORE" (score with 6 decimals), best first, and exits 0.
// On a gRPC error prints "error: <STATUS_CODE_NAME>: <details>" to stderr and exits 1;
// on a usage error exits 2.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");
const PROTO_FILE = "onnxrec/v1/recommender.proto";
const DEFAULT_K = 10;
const DEADLINE_MS = 5000;
const INT32_MAX = 2 ** 31 - 1;

/**
 * @typedef {{ item_id: string, score: number, metadata: Record<string, string> }} ScoredItem
 * @typedef {{ items: ScoredItem[], model_name: string, model_version: string, source: string }} RecommendResponse
 */

/**
 * Loads the service definition from the .proto at run time (no generated code).
 * @returns {typeof grpc.Client} the RecommenderService client constructor
 */
function loadRecommenderService() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto: item_id, user_id, ...
    longs: String, // int64 (model_version) as a decimal string
    enums: String, // Source as its name, e.g. "SOURCE_MODEL"
    defaults: true, // unset fields read as their default values
  });
  const proto = /** @type {any} */ (grpc.loadPackageDefinition(definition));
  return proto.onnxrec.v1.RecommenderService;
}

/**
 * Formats a score as C's printf("%.6f") does: rounded to 6 decimals, exact ties to even.
 * (Number.prototype.toFixed rounds exact ties away from zero, e.g. 0.0078125 -> "0.007813".)
 * @param {number} score
 * @returns {string}
 */
function formatScore(score) {
  let text = score.toFixed(6);
  // toFixed(100) is the exact decimal expansion of a double (for |score| < 1e21).
  const tie = /^(-?\d+\.\d{6})50*$/.exec(score.toFixed(100));
  if (tie && Number(tie[1].at(-1)) % 2 === 0) {
    text = tie[1]; // the even neighbour is the one toward zero
  }
  if (Object.is(score, -0)) {
    text = `-${text}`;
  }
  return text;
}

/**
 * Parses ADDRESS MODEL USER_ID [K]; returns null on a usage error.
 * @param {string[]} args
 * @returns {{ address: string, model: string, userId: string, k: number } | null}
 */
function parseArgs(args) {
  if (args.length < 3 || args.length > 4) {
    return null;
  }
  const [address, model, userId, kText] = args;
  let k = DEFAULT_K;
  if (kText !== undefined) {
    k = /^\d+$/.test(kText) ? Number(kText) : NaN;
    if (!(k >= 1 && k <= INT32_MAX)) {
      process.stderr.write(`K must be a positive integer, got '${kText}'\n`);
      return null;
    }
  }
  return { address, model, userId, k };
}

function main() {
  const options = parseArgs(process.argv.slice(2));
  if (options === null) {
    process.stderr.write(`usage: ${path.basename(process.argv[1])} ADDRESS MODEL USER_ID [K]\n`);
    process.exitCode = 2;
    return;
  }

  const RecommenderService = loadRecommenderService();
  // Plaintext; for a TLS server use grpc.credentials.createSsl(rootCert).
  const client = new RecommenderService(options.address, grpc.credentials.createInsecure());
  const request = {
    model: { name: options.model, version: 0 }, // version 0: the latest loaded version
    user_id: options.userId,
    k: options.k,
  };
  const deadline = new Date(Date.now() + DEADLINE_MS);

  client.Recommend(
    request,
    { deadline },
    /**
     * @param {grpc.ServiceError | null} err
     * @param {RecommendResponse} response
     */
    (err, response) => {
      client.close();
      if (err) {
        // grpc.status is a numeric enum: grpc.status[5] === "NOT_FOUND".
        const name = grpc.status[err.code] ?? String(err.code);
        process.stderr.write(`error: ${name}: ${err.details}\n`);
        process.exitCode = 1;
        return;
      }
      const lines = response.items.map((item) => `${item.item_id}\t${formatScore(item.score)}\n`);
      process.stdout.write(lines.join(""));
      process.exitCode = 0;
    },
  );
}

if (require.main === module) {
  main();
}

module.exports = { formatScore, parseArgs, loadRecommenderService };
