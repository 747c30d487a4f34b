"""Baseline: what users write by hand with the official SDK — AsyncOpenAI + asyncio.Semaphore,
the SDK's own retries (6), and a row that fails for good recorded as an error.

usage: baseline_openai.py INPUT.jsonl OUTPUT.jsonl BASE_URL CONCURRENCY
"""

import asyncio
import json
import sys

import openai
from openai import AsyncOpenAI


async def main(src: str, dst: str, base: str, concurrency: int) -> None:
    client = AsyncOpenAI(base_url=base, api_key="mock-key", max_retries=6)
    sem = asyncio.Semaphore(concurrency)
    with open(src) as fh:
        prompts = [json.loads(line)["prompt"] for line in fh if line.strip()]

    async def one(i: int, prompt: str) -> dict:
        async with sem:
            try:
                resp = await client.chat.completions.create(
                    model="bench", messages=[{"role": "user", "content": prompt}]
                )
            except openai.APIError as err:
                return {"id": i, "error": str(err)}
            return {"id": i, "output": resp.choices[0].message.content, "usage": resp.usage.total_tokens}

    results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    with open(dst, "w") as fh:
        for r in results:
            fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
