// A Node.js client of lstm.v1, as another team would write one: stubs generated at run time
// from proto/ by @grpc/proto-loader, calls made with @grpc/grpc-js. Prints what it got as JSON.
//   node client.mjs HOST:PORT PROTO_ROOT
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const [target, protoRoot] = process.argv.slice(2);
const definition = protoLoader.loadSync("lstm/v1/lstm_service.proto", {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
});
const lstm = grpc.loadPackageDefinition(definition).lstm.v1;
const client = new lstm.LstmService(target, grpc.credentials.createInsecure());
const call = (method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, (error, reply) => (error ? reject(error) : resolve(reply))),
  );

const x = [[0.5, -0.25, 1.0, 0, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0, 0, 0, 0, 0], [-1.0, 0.0, 0.75, 0, 0, 0, 0, 0]];
const sequence = (rows) => ({ timesteps: rows.map((values) => ({ values })) });

const metadata = await call("GetModelMetadata", {});
const predicted = await call("Predict", { sequences: [sequence(x)] });
const session = await call("CreateSession", { ttl_seconds: 60 });
const steps = [];
for (const [n, rows] of [[1, x.slice(0, 1)], [2, x.slice(1)]]) {
  steps.push(
    await call("Step", { session_id: session.session_id, input: sequence(rows), step_number: n }),
  );
}
const exported = await call("GetSession", { session_id: session.session_id });
let refused = null;
try {
  await call("Step", { session_id: session.session_id, input: sequence(x), step_number: 7 });
} catch (error) {
  refused = { code: error.code, details: error.details };
}
await call("CloseSession", { session_id: session.session_id });
client.close();
console.log(
  JSON.stringify({
    units: metadata.units,
    input_features: metadata.input_features,
    hidden: predicted.outputs[0].hidden_sequence.map((v) => v.values),
    h: predicted.outputs[0].final_state.h.values,
    c: predicted.outputs[0].final_state.c.values,
    stepped: steps.flatMap((s) => s.hidden_sequence.map((v) => v.values)),
    step_numbers: steps.map((s) => s.step_number),
    exported_c: exported.state.c.values,
    step_count: exported.step_count,
    refused,
  }),
);
