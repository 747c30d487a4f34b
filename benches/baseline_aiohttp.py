"""Baseline: a plain aiohttp fan-out with a semaphore, as users write it to go faster than the SDK.

usage: baseline_aiohttp.py INPUT.jsonl OUTPUT.jsonl BASE_URL CONCURRENCY
"""

import asyncio
import json
import sys

import aiohttp


async def main(src: str, dst: str, base: str, concurrency: int) -> None:
    with open(src) as fh:
        prompts = [json.loads(line)["prompt"] for line in fh if line.strip()]
    sem = asyncio.Semaphore(concurrency)
    headers = {"Authorization": "Bearer mock-key"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(i: int, prompt: str) -> dict:
            body = {"model": "bench", "messages": [{"role": "user", "content": prompt}]}
            async with sem:
                for _ in range(7):
                    async with session.post(f"{base}/chat/completions", json=body) as resp:
                        if resp.status == 200:
                            data = await resp.json()
                            return {"id": i, "output": data["choices"][0]["message"]["content"]}
                    await asyncio.sleep(0.5)
                return {"id": i, "output": None}

        results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    with open(dst, "w") as fh:
        for r in results:
            fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
