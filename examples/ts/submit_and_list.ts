/**
 * Submit one alert to Kubernaut's gateway, then find the incident it opened in storage:
 * TypeScript with @connectrpc/connect's gRPC transport, over mutual TLS.
 *
 *     npm exec tsc -- -p examples/ts
 *     node examples/ts/submit_and_list.js --gateway localhost:9080 --storage localhost:9085 \
 *         --ca ~/.local/state/kubernaut/certs/ca.crt \
 *         --cert ~/.local/state/kubernaut/certs/operator.crt \
 *         --key ~/.local/state/kubernaut/certs/operator.key
 *
 * Each flag has an environment variable: KUBERNAUT_GATEWAY_ADDRESS, KUBERNAUT_STORAGE_ADDRESS,
 * KUBERNAUT_CA_FILE, KUBERNAUT_CERT_FILE, KUBERNAUT_KEY_FILE (by default ca.crt, operator.crt
 * and operator.key in KUBERNAUT_CERTS_DIR or ~/.local/state/kubernaut/certs). Prints what the
 * gateway did with the alert, then the incident's id; exits 1 with the reason on failure.
 */

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";

import { timestampNow } from "@bufbuild/protobuf/wkt";
import { createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

// gen/ts is the npm package @kubernaut/api: outside this repository, import from
// "@kubernaut/api/kubernaut/gateway/v1/gateway_pb.js" and so on.
import { AlertSource, AlertStatus } from "../../gen/ts/kubernaut/common/v1/alert_pb.js";
import { AlertDisposition } from "../../gen/ts/kubernaut/common/v1/remediation_pb.js";
import { GatewayService } from "../../gen/ts/kubernaut/gateway/v1/gateway_pb.js";
import { StorageService } from "../../gen/ts/kubernaut/storage/v1/storage_pb.js";

const env = process.env;
const certs = env.KUBERNAUT_CERTS_DIR ?? `${homedir()}/.local/state/kubernaut/certs`;
const { values: flags } = parseArgs({
  options: {
    gateway: { type: "string", default: env.KUBERNAUT_GATEWAY_ADDRESS ?? "localhost:9080" },
    storage: { type: "string", default: env.KUBERNAUT_STORAGE_ADDRESS ?? "localhost:9085" },
    // The dev CA, and your certificate from it (`kubernaut certs init` makes the operator's).
    ca: { type: "string", default: env.KUBERNAUT_CA_FILE ?? `${certs}/ca.crt` },
    cert: { type: "string", default: env.KUBERNAUT_CERT_FILE ?? `${certs}/operator.crt` },
    key: { type: "string", default: env.KUBERNAUT_KEY_FILE ?? `${certs}/operator.key` },
    "wait-seconds": { type: "string", default: "60" },
  },
});

async function main(): Promise<string> {
  // gRPC over HTTP/2 with mutual TLS. The services' certificates name localhost (and their
  // in-cluster Service names): the address's host is the server name to verify.
  const tls = {
    ca: readFileSync(flags.ca),
    cert: readFileSync(flags.cert),
    key: readFileSync(flags.key),
  };
  const transport = (address: string): Transport =>
    createGrpcTransport({ baseUrl: `https://${address}`, nodeOptions: tls });

  // What AlertManager would send (in a namespace of its own, to tell its incident apart).
  const namespace = `example-${randomUUID().slice(0, 8)}`;
  const alert = {
    name: "KubeDeploymentRolloutStuck",
    status: AlertStatus.FIRING,
    labels: {
      alertname: "KubeDeploymentRolloutStuck",
      namespace,
      deployment: "checkout",
      severity: "warning",
    },
    startsAt: timestampNow(),
    source: AlertSource.ALERTMANAGER,
  };
  const gateway = createClient(GatewayService, transport(flags.gateway));
  const { outcomes } = await gateway.submitAlerts({ alerts: [alert] }, { timeoutMs: 10_000 });
  const disposition = AlertDisposition[outcomes[0].disposition];
  console.log(`gateway: ${disposition} ${outcomes[0].reason}`);

  // The gateway answers once the alert is safely queued; the incident opens soon after.
  const storage = createClient(StorageService, transport(flags.storage));
  const deadline = Date.now() + Number(flags["wait-seconds"]) * 1000;
  while (Date.now() < deadline) {
    const { incidents } = await storage.listIncidents(
      { alertName: alert.name, openedAfter: alert.startsAt },
      { timeoutMs: 10_000 },
    );
    const mine = incidents.find((incident) => incident.subject?.namespace === namespace);
    if (mine) {
      return mine.incidentId;
    }
    await sleep(500);
  }
  throw new Error(`no incident for the alert (${disposition}) after ${flags["wait-seconds"]} s`);
}

main().then(
  (incidentId) => console.log(incidentId),
  (error: unknown) => {
    // A ConnectError's message starts with its gRPC code: "[unavailable] ...".
    console.error(`submit_and_list: ${error instanceof Error ? error.message : String(error)}`);
    process.exitCode = 1;
  },
);
