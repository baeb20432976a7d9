"""A MongoDB wire-protocol server for tests, from the PyPI package mongoeco.

Prints `READY <port>` once it accepts connections, and stops cleanly on
SIGTERM or SIGINT. With --user/--password it requires SCRAM-SHA-256
authentication against the `admin` database.
"""

import argparse
import asyncio
import signal

from mongoeco.wire import AsyncMongoEcoProxyServer, WireAuthUser


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
