"""A stand-in for the Kubeflow Pipelines API server on 127.0.0.1, for contract tests.

It answers the v2beta1 REST paths ``kfp.Client`` calls for submit and schedule (healthz,
experiments, pipelines and their versions with the multipart uploads, runs, recurring
runs) with the JSON shapes the real server returns, and records every request so a test
can assert exactly what the client sent (an upload's body: its form fields, the file's
text under "uploadfile"). No real KFP
server can run here; this is not one, only the contract of its API.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict | None


@dataclass
class KfpStub:
    experiments: list[dict] = field(default_factory=list)
    pipelines: list[dict] = field(default_factory=list)
    versions: list[dict] = field(default_factory=list)
    packages: dict[str, str] = field(default_factory=dict)  # version id -> the uploaded file's text
    recurring_runs: list[dict] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    url: str = ""

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def only(self, method: str, path: str) -> Request:
        found = [r for r in self.requests if (r.method, r.path) == (method, path)]
        assert len(found) == 1, f"expected one {method} {path}, got {self.calls()}"
        return found[0]

    # ---- the API ---------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: dict | None) -> tuple[int, dict]:
        if (method, path) == ("GET", f"{API}/healthz"):
            return 200, {"multi_user": False}
        if (method, path) == ("GET", f"{API}/experiments"):
            wanted = _filter_value(query.get("filter"), "display_name")
            found = [e for e in self.experiments if wanted is None or e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{API}/experiments"):
            experiment = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}", "storage_state": "AVAILABLE"}
            self.experiments.append(experiment)
            return 200, experiment
        if (method, path) == ("GET", f"{API}/pipelines"):
            wanted = _filter_value(query.get("filter"), "display_name")
            found = [p for p in self.pipelines if wanted is None or p["display_name"] == wanted]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{API}/pipelines/upload"):
            pipeline = {"pipeline_id": f"pl-{len(self.pipelines) + 1}", "display_name": query["name"]}
            self.pipelines.append(pipeline)
            # The real server makes the package the pipeline's first version, named as the pipeline.
            self._add_version(pipeline["pipeline_id"], query["name"], body["uploadfile"])
            return 200, pipeline
        if (method, path) == ("POST", f"{API}/pipelines/upload_version"):
            if not any(p["pipeline_id"] == query.get("pipelineid") for p in self.pipelines):
                return 404, {"error": f"pipeline {query.get('pipelineid')} not found", "code": 5}
            return 200, self._add_version(query["pipelineid"], query["name"], body["uploadfile"])
        match = re.fullmatch(rf"{API}/pipelines/([^/]+)/versions(?:/([^/]+))?", path)
        if match and method == "GET":
            of_pipeline = [v for v in self.versions if v["pipeline_id"] == match[1]]
            if match[2]:
                found = [v for v in of_pipeline if v["pipeline_version_id"] == match[2]]
                return (200, found[0]) if found else (404, {"error": f"version {match[2]} not found", "code": 5})
            wanted = _filter_value(query.get("filter"), "display_name")
            found = [v for v in of_pipeline if wanted is None or v["display_name"] == wanted]
            return 200, {"pipeline_versions": found, "total_size": len(found)} if found else {}
        if (method, path) == ("POST", f"{API}/runs"):
            return 200, {**body, "run_id": "run-1", "state": "PENDING"}
        if (method, path) == ("POST", f"{API}/recurringruns"):
            status = "DISABLED" if body.get("mode") == "DISABLE" else "ENABLED"
            recurring = {**body, "recurring_run_id": f"rr-{len(self.recurring_runs) + 1}", "status": status}
            self.recurring_runs.append(recurring)
            return 200, recurring
        if (method, path) == ("GET", f"{API}/recurringruns"):
            # This list's JSON name is camelCase in KFP's API (json_name in the proto), unlike the others.
            return 200, {"recurringRuns": self.recurring_runs, "total_size": len(self.recurring_runs)}
        match = re.fullmatch(rf"{API}/recurringruns/([^/:]+)(?::(enable|disable))?", path)
        if match:
            recurring = next((r for r in self.recurring_runs if r["recurring_run_id"] == match[1]), None)
            if recurring is None:
                return 404, {"error": f"recurring run {match[1]} not found", "code": 5}
            if method == "POST" and match[2]:
                recurring["status"] = "ENABLED" if match[2] == "enable" else "DISABLED"
                return 200, {}
            if method == "DELETE" and not match[2]:
                self.recurring_runs.remove(recurring)
                return 200, {}
        return 404, {"error": f"no route {method} {path}", "code": 5}

    def _add_version(self, pipeline_id: str, name: str, package: str) -> dict:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": f"pv-{len(self.versions) + 1}",
            "display_name": name,
        }
        self.versions.append(version)
        self.packages[version["pipeline_version_id"]] = package
        return version

    # ---- serving ---------------------------------------------------------
    def serve(self) -> ThreadingHTTPServer:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                parsed = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = _body(self.headers.get("Content-Type", ""), raw)
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                stub.requests.append(
                    Request(self.command, parsed.path, query, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status, answer = stub.handle(self.command, parsed.path, query, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def _body(content_type: str, raw: bytes) -> dict | None:
    """JSON, or a multipart form (an upload) as {field: text}."""
    if not raw:
        return None
    if content_type.startswith("multipart/form-data"):
        form = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        return {
            part.get_param("name", header="content-disposition"): part.get_payload(decode=True).decode()
            for part in form.iter_parts()
        }
    return json.loads(raw)


def _filter_value(raw_filter: str | None, key: str) -> str | None:
    """The stringValue of an EQUALS predicate on ``key`` in KFP's JSON filter."""
    if not raw_filter:
        return None
    for predicate in json.loads(raw_filter).get("predicates", []):
        if predicate.get("key") == key:
            return predicate.get("stringValue") or predicate.get("string_value")
    return None
