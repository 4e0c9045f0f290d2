"""dispatch.function: a function that runs asynchronously, with retries.

python examples/function.py                      (an orchestrator in the process)
dispatch run -- python examples/function.py      (the orchestrator of the CLI)
"""

import dispatch


@dispatch.function
def greet(name: str) -> None:
    print("Hello", name)


def main() -> None:
    greet.dispatch("Jane")


dispatch.run(main)
