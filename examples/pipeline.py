"""A pipeline: fan out over a list, a flaky step that succeeds on a retry, an aggregate.

    python examples/pipeline.py
    dispatch run -- python examples/pipeline.py

fetch_price fails the first time it sees each item (a dropped connection,
which dispatch retries with backoff); the pipeline waits for every price,
then computes the total in a final step.
"""

import dispatch

PRICES = {"apple": 3, "pear": 4, "plum": 2, "fig": 7}

attempts_seen: set[str] = set()


@dispatch.function
def fetch_price(item: str) -> int:
    if item not in attempts_seen:
        attempts_seen.add(item)
        print(f"fetch_price({item!r}): connection dropped, will be retried")
        raise ConnectionResetError(f"lost the connection fetching {item}")
    print(f"fetch_price({item!r}) = {PRICES[item]}")
    return PRICES[item]


@dispatch.function
def total(prices: list[int]) -> int:
    return sum(prices)


@dispatch.function
async def pipeline(items: list[str]) -> int:
    prices = await dispatch.gather(*[fetch_price(item) for item in items])
    amount = await total(prices)
    print(f"pipeline: {len(items)} items, total {amount}")
    return amount


def main() -> None:
    pipeline.dispatch(["apple", "pear", "plum", "fig"])


dispatch.run(main)
