"""A MongoDB wire-protocol server for tests, from the PyPI package mongoeco.

Prints `READY <port>` once it accepts connections, and stops cleanly on
SIGTERM or SIGINT. With --user/--password it requires SCRAM-SHA-256
authentication against the `admin` database.
"""

import argparse
import asyncio
import signal

from bson.int64 import Int64
from mongoeco.wire import AsyncMongoEcoProxyServer, WireAuthUser
from mongoeco.wire import cursors as _cursors
from mongoeco.wire import executor as _executor


def _int64_cursor_id(method):
    """Cursor ids are int64 on the wire (MongoDB's `cursor.id` is a long).

    mongoeco 4.11 encodes small ids as int32, which strict drivers (the Rust
    driver among them) reject for every cursor-returning command (find,
    aggregate, listIndexes). This keeps the server conformant; it changes no
    query behaviour.
    """

    def wrapper(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        cursor = result.get("cursor") if isinstance(result, dict) else None
        if isinstance(cursor, dict) and type(cursor.get("id")) is int:
            cursor["id"] = Int64(cursor["id"])
        return result

    return wrapper


_cursors.WireCursorStore.materialize_command_result = _int64_cursor_id(
    _cursors.WireCursorStore.materialize_command_result
)
_cursors.WireCursorStore.get_more = _int64_cursor_id(_cursors.WireCursorStore.get_more)


_NUMERIC_OPTIONS = ("limit", "skip", "batchSize", "maxTimeMS")


def _int64_options(method):
    """Drivers may send numeric command options (`limit`, `skip`,
    `batchSize`, ...) as int64; mongoeco 4.11 accepts only int32 there
    (find_one's `limit: 1` is an int64 from the Rust driver). Pass their
    values through as plain integers."""

    def wrapper(self, body, *args, **kwargs):
        if hasattr(body, "get") and any(hasattr(body.get(k), "value") for k in _NUMERIC_OPTIONS):
            body = dict(body)
            for key in _NUMERIC_OPTIONS:
                value = body.get(key)
                if hasattr(value, "value") and isinstance(value.value, int):
                    body[key] = int(value.value)
        return method(self, body, *args, **kwargs)

    return wrapper


def _error_code(function):
    """Command errors carry a numeric `code`; mongoeco 4.11 omits it for some
    errors, which drivers then cannot parse. 8 is MongoDB's UnknownError."""

    def wrapper(exc):
        document = function(exc)
        if isinstance(document, dict) and document.get("ok") == 0.0:
            document.setdefault("code", 8)
        return document

    return staticmethod(wrapper)


_executor.WireCommandExecutor._build_request_context = _int64_options(
    _executor.WireCommandExecutor._build_request_context
)
_executor.WireCommandExecutor.error_document = _error_code(_executor.WireCommandExecutor.error_document)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()

    users = ()
    if args.user:
        users = (
            WireAuthUser(
                username=args.user,
                password=args.password,
                source="admin",
                mechanisms=("SCRAM-SHA-256",),
                roles=({"role": "root", "db": "admin"},),
            ),
        )
    server = AsyncMongoEcoProxyServer(host=args.host, port=args.port, auth_users=users)
    address = await server.start()
    print(f"READY {address.port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


if __name__ == "__main__":
    asyncio.run(main())
