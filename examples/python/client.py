#!/usr/bin/env python3
"""A platform's client of oip-gateway, written from the .proto files alone.

It generates the Python stubs from proto/oip/v1/*.proto at run time (grpc_tools.protoc
into a temporary directory), connects over mutual TLS as demo platform A
(certs-example/platform-a.pem), and then does what a platform does:

1. registers workers (RegisterWorkers), and sends one again to show DUPLICATE;
2. reports orders of last month (ReportOrders);
3. reads the gateway's figures of that month (ListVolumeStatements) and declares them
   (SubmitDeclarations), showing the reconciliation that comes back;
4. reads back what was rejected (ListRejections, page by page with next_page_token)
   and the declaration as stored now (ListDeclarations).

Every record gets one outcome; `show_outcomes` shows what to do with each of the four
(ACCEPTED, ACCEPTED_WITH_WARNINGS, DUPLICATE, REJECTED with code, field and message).
A call that fails as a whole (a status other than OK) is reported with its gRPC code.

Usage (with a gateway running, `cargo run -- serve`):

    pip install -r examples/python/requirements.txt
    python3 examples/python/client.py [--endpoint https://127.0.0.1:50051]
"""

import argparse
import datetime
import importlib
import os
import sys
import tempfile
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[2]
SHANGHAI = datetime.timezone(datetime.timedelta(hours=8))


def generate_stubs(proto_root: Path, out_dir: str):
    """Compiles every proto/oip/v1/*.proto into out_dir and imports the modules."""
    import grpc_tools
    from grpc_tools import protoc

    files = sorted(str(p) for p in (proto_root / "oip" / "v1").glob("*.proto"))
    if not files:
        sys.exit(f"no .proto files under {proto_root}/oip/v1")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *files,
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed on {proto_root} (exit {status})")
    sys.path.insert(0, out_dir)
    importlib.invalidate_caches()
    records = importlib.import_module("oip.v1.records_pb2")
    platform = importlib.import_module("oip.v1.platform_pb2")
    platform_grpc = importlib.import_module("oip.v1.platform_pb2_grpc")
    return records, platform, platform_grpc


def check_certificate(path):
    """Stops with what to do when the client certificate has expired or is not yet
    valid (the gateway would refuse the handshake, which gRPC reports only as a
    connection that never becomes ready). Uses `cryptography` when it is installed."""
    try:
        from cryptography import x509
    except ImportError:
        return
    import datetime

    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc < now:
        sys.exit(
            f"--cert {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: ask the "
            "gateway's administrator for a new certificate"
        )
    if cert.not_valid_before_utc > now:
        sys.exit(f"--cert {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")


def connect(args):
    """A channel over mutual TLS: the CA that issued the gateway's certificate, and the
    platform's own certificate and key (its oip://platform/<USCC> identity is who
    calls)."""
    if not args.endpoint.startswith("https://"):
        sys.exit(
            f"--endpoint {args.endpoint}: the gateway speaks mutual TLS only; "
            "use https://HOST:PORT"
        )
    target = args.endpoint[len("https://"):]
    if ":" not in target.rsplit("]", 1)[-1]:
        sys.exit(f"--endpoint {args.endpoint} names no port; e.g. https://{target}:50051")
    check_certificate(args.cert)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.ca).read_bytes(),
        private_key=Path(args.key).read_bytes(),
        certificate_chain=Path(args.cert).read_bytes(),
    )
    # The gateway's certificate names `localhost`; connecting by IP address, the name
    # to check is given explicitly.
    options = [("grpc.ssl_target_name_override", args.domain)]
    channel = grpc.secure_channel(target, credentials, options)
    try:
        grpc.channel_ready_future(channel).result(timeout=args.timeout)
    except grpc.FutureTimeoutError:
        sys.exit(
            f"cannot connect to {args.endpoint} within {args.timeout}s: is the gateway "
            "running (cargo run -- serve), and are --ca/--cert/--key right?"
        )
    return channel


def call(method, request, what):
    """One unary call: the response, with the gateway's trace id printed. A failed
    call (any status but OK) is about the call as a whole; nothing of it was applied
    (README, "Call-level statuses"), so it is reported and the example stops."""
    try:
        response, rpc = method.with_call(request, timeout=30)
    except grpc.RpcError as e:
        sys.exit(f"{what} failed: {e.code().name}: {e.details()}")
    trace = dict(rpc.initial_metadata()).get("x-trace-id", "")
    print(f"{what}: OK (x-trace-id {trace})")
    return response


def show_outcomes(records, batch):
    """What to do with each record's outcome; returns the ids rejected."""
    rejected = []
    for o in batch.outcomes:
        name = records.Outcome.Name(o.outcome)
        head = f"  [{o.index}] {o.kind} {o.id} revision {o.revision}: {name}"
        if o.outcome == records.ACCEPTED:
            # Stored durably before the answer, and queued for the backends.
            print(head)
        elif o.outcome == records.ACCEPTED_WITH_WARNINGS:
            # Stored too; the warnings say what someone should look at (a late
            # declaration, declared figures that differ from the gateway's, ...).
            print(f"{head} (warnings: {', '.join(o.warnings)})")
        elif o.outcome == records.DUPLICATE:
            # The same id, revision and content is already stored: nothing changed.
            # Resending is always safe, so a client may resend after any doubt.
            print(f"{head} (already stored, nothing to do)")
        elif o.outcome == records.REJECTED:
            # Nothing of the record was stored: fix the field and resend (the same
            # revision is fine, it was never stored). The message never holds
            # personal data, so it may be logged.
            print(f"{head}: {o.code} at {o.field}: {o.message}")
            rejected.append(o.id)
        else:
            print(f"{head} (unknown outcome: a newer gateway? treat as not stored)")
        if o.HasField("reconciliation"):
            r = o.reconciliation
            print(
                f"      reconciliation {r.status}: declared {r.declared.order_count} "
                f"orders / {r.declared.amount_fen} fen, gateway computed "
                f"{r.computed.order_count} orders / {r.computed.amount_fen} fen"
            )
    s = batch.summary
    print(
        f"  summary: {s.accepted} accepted, {s.accepted_with_warnings} with warnings, "
        f"{s.duplicate} duplicate, {s.rejected} rejected"
    )
    return rejected


def last_month():
    """The month before this one in Asia/Shanghai, as YYYY-MM: a month that has ended
    (a declaration's period must have ended)."""
    today = datetime.datetime.now(SHANGHAI).date()
    last = today.replace(day=1) - datetime.timedelta(days=1)
    return f"{last.year:04d}-{last.month:02d}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("OIP_ENDPOINT", "https://127.0.0.1:50051"),
        help="the gateway, https://HOST:PORT (default: $OIP_ENDPOINT or "
        "https://127.0.0.1:50051)",
    )
    certs = REPO / "certs-example"
    parser.add_argument("--ca", default=str(certs / "ca.pem"), help="CA certificate (PEM)")
    parser.add_argument(
        "--cert", default=str(certs / "platform-a.pem"), help="client certificate (PEM)"
    )
    parser.add_argument(
        "--key", default=str(certs / "platform-a.key"), help="its private key (PEM)"
    )
    parser.add_argument(
        "--domain", default="localhost", help="the name the gateway's certificate holds"
    )
    parser.add_argument(
        "--proto", default=str(REPO / "proto"), help="directory holding oip/v1/*.proto"
    )
    parser.add_argument(
        "--prefix",
        default=f"PY{int(datetime.datetime.now().timestamp())}",
        help="prefix of the record ids of this run (default: PY<unix time>, so every "
        "run stores new records)",
    )
    parser.add_argument(
        "--page-size", type=int, default=10, help="items per page when reading back"
    )
    parser.add_argument(
        "--timeout", type=float, default=10, help="seconds to wait for the connection"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="oip-stubs-") as stubs:
        records, platform, platform_grpc = generate_stubs(Path(args.proto), stubs)
        channel = connect(args)
        stub = platform_grpc.PlatformServiceStub(channel)
        run(args, records, platform, stub)
        channel.close()


def run(args, records, platform, stub):
    p = args.prefix
    period = last_month()
    ok_worker = records.Worker(
        worker_id=f"{p}-W1",
        id_number="11010519491231002X",  # a valid resident ID number (check character X)
        name="张三",
        mobile="13800138000",
        industries=["INSTANT_DELIVERY"],
        registered_at="2025-07-01T08:00:00+08:00",
        status="ACTIVE",
    )
    bad_worker = records.Worker(
        worker_id=f"{p}-W2",
        id_number="110105194912310021",  # wrong check character: INVALID_ID_NUMBER
        name="李四",
        mobile="13912345678",
        industries=["INSTANT_DELIVERY"],
        registered_at="2025-07-01T08:00:00+08:00",
        status="ACTIVE",
    )

    print("1. RegisterWorkers: one valid worker, one with a wrong ID number")
    batch = call(
        stub.RegisterWorkers,
        platform.RegisterWorkersRequest(workers=[ok_worker, bad_worker]),
        "RegisterWorkers",
    )
    show_outcomes(records, batch)
    print("   ... and the valid one again (a resend is always safe)")
    batch = call(
        stub.RegisterWorkers,
        platform.RegisterWorkersRequest(workers=[ok_worker]),
        "RegisterWorkers",
    )
    show_outcomes(records, batch)

    print(f"\n2. ReportOrders: two completed orders in Nanjing in {period}, one of an "
          "unknown worker")

    def order(n, worker, hour):
        return records.Order(
            order_id=f"{p}-O{n}",
            worker_id=worker,
            industry="INSTANT_DELIVERY",
            division_code="320100",
            accepted_at=f"{period}-05T{hour:02d}:00:00+08:00",
            completed_at=f"{period}-05T{hour:02d}:30:00+08:00",
            status="COMPLETED",
        )

    batch = call(
        stub.ReportOrders,
        platform.ReportOrdersRequest(
            orders=[
                order(1, ok_worker.worker_id, 10),
                order(2, ok_worker.worker_id, 12),
                order(3, f"{p}-NOBODY", 14),  # WORKER_NOT_REGISTERED
            ]
        ),
        "ReportOrders",
    )
    show_outcomes(records, batch)

    print(f"\n3. ListVolumeStatements {period}, then SubmitDeclarations with those figures")
    statements = call(
        stub.ListVolumeStatements,
        platform.ListVolumeStatementsRequest(period=period),
        "ListVolumeStatements",
    ).statements
    figures = (0, 0)
    for s in statements:
        print(
            f"  {s.period} {s.division_code} {s.industry}: {s.billable_count} billable, "
            f"{s.base_fen_per_order} fen/order x {s.multiplier} = {s.amount_fen} fen"
            f"{' (closed)' if s.closed else ''}"
        )
        if s.division_code == "320100" and s.industry == "INSTANT_DELIVERY":
            figures = (s.billable_count, s.amount_fen)
    declaration = records.Declaration(
        declaration_id=f"{p}-D1",
        period=period,
        division_code="320100",
        industry="INSTANT_DELIVERY",
        order_count=figures[0],
        amount_fen=figures[1],
    )
    batch = call(
        stub.SubmitDeclarations,
        platform.SubmitDeclarationsRequest(declarations=[declaration]),
        "SubmitDeclarations",
    )
    show_outcomes(records, batch)

    print(f"\n4. ListRejections, {args.page_size} per page (this run's records shown)")
    token, pages, total = "", 0, 0
    while True:
        page = call(
            stub.ListRejections,
            platform.ListRequest(page_size=args.page_size, page_token=token),
            f"ListRejections page {pages + 1}",
        )
        pages += 1
        total += len(page.rejections)
        for r in page.rejections:
            if r.id.startswith(f"{p}-"):
                print(f"  {r.kind} {r.id}: {r.code} at {r.field}: {r.message}")
        # An empty next_page_token is the last page; otherwise pass it back unchanged.
        if not page.next_page_token:
            break
        token = page.next_page_token
    print(f"  {total} rejections in {pages} {'page' if pages == 1 else 'pages'}")

    print("\n   ListDeclarations of this run's declaration, as stored now")
    page = call(
        stub.ListDeclarations,
        platform.ListRequest(id=declaration.declaration_id),
        "ListDeclarations",
    )
    for d in page.declarations:
        r = d.reconciliation
        print(
            f"  {d.declaration.declaration_id} revision {d.declaration.revision}: "
            f"{r.status}, declared {r.declared.order_count} orders / "
            f"{r.declared.amount_fen} fen, computed {r.computed.order_count} orders / "
            f"{r.computed.amount_fen} fen"
        )
    print("\ndone")


if __name__ == "__main__":
    main()
