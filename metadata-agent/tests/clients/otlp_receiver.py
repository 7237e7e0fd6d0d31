"""An OTLP/HTTP logs receiver built on the opentelemetry-proto package: decodes every
POST /v1/logs (protobuf ExportLogsServiceRequest) and appends each log record to OUT as a JSON
line (with its resource's attributes). The first FAIL_FIRST requests are answered 503, as a
collector under load would. Prints "listening PORT" once ready."""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

OUT = sys.argv[1]
failures_left = int(os.environ.get("FAIL_FIRST", "0"))


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        global failures_left
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/logs" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404)
            self.end_headers()
            return
        if failures_left > 0:
            failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        request = logs_service_pb2.ExportLogsServiceRequest()
        request.ParseFromString(body)
        with open(OUT, "a") as out:
            for resource_logs in request.resource_logs:
                resource = {kv.key: value(kv.value) for kv in resource_logs.resource.attributes}
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        out.write(json.dumps({
                            "resource": resource,
                            "scope": scope_logs.scope.name,
                            "event_name": record.event_name,
                            "severity": record.severity_text,
                            "body": value(record.body),
                            "time_unix_nano": record.time_unix_nano,
                            "attributes": {kv.key: value(kv.value) for kv in record.attributes},
                        }) + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(logs_service_pb2.ExportLogsServiceResponse().SerializeToString())

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
