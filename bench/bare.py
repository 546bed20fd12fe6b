"""The bare contender: syncengine's calls for Goose -> Mongoose, in a stateless httpx loop.

    python -m bench.bare --goose URL --mongoose URL [--batch 100]

No journal, no retry, no state: one Goose `deleted` call (from latest), one
Mongoose security token, then per batch of deletions one LoadCollection of the
batch's natural keys and one DeleteItems of the ItemIds found (none when none
is found). What a journaling engine is measured against. Prints one JSON line:
{"job_seconds", "deleted", "absent"}; exits 1 on any answer it did not expect.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx

from bench.scenario import (
    GOOSE_CODE,
    GOOSE_KEY,
    IDO,
    LOOKUP,
    MONGOOSE_BASE,
    MONGOOSE_CONFIG,
    MONGOOSE_PASSWORD,
    MONGOOSE_USER,
    TABLE,
)

TIMEOUT = 300.0
DELETE_SUCCESSFUL = 202


class Unexpected(Exception):
    pass


def deleted(client: httpx.Client, goose: str) -> list[dict[str, Any]]:
    body = {"code": GOOSE_CODE, "key": GOOSE_KEY, "table": TABLE, "from": "latest", "imc": False}
    answer = client.post(f"{goose}/deleted/", json=body).raise_for_status().json()
    if answer.get("status") != "OK":
        raise Unexpected(f"Goose: {answer}")
    rows: list[dict[str, Any]] = answer["result"]["data"]
    return rows


def token(client: httpx.Client, base: str) -> str:
    response = client.get(
        f"{base}/json/token/{MONGOOSE_CONFIG}",
        headers={"userid": MONGOOSE_USER, "password": MONGOOSE_PASSWORD},
    )
    value = response.raise_for_status().json().get("Token")
    if not isinstance(value, str):
        raise Unexpected("Mongoose: no token")
    return value


def find(client: httpx.Client, base: str, keys: list[str]) -> dict[str, str]:
    literals = ",".join("'" + key.replace("'", "''") + "'" for key in keys)
    params = {"props": f"_ItemId,{LOOKUP}", "filter": f"{LOOKUP} IN ({literals})", "recordcap": "0"}
    answer = client.get(f"{base}/json/{IDO}/adv", params=params).raise_for_status().json()
    items = answer.get("Items")
    if not isinstance(items, list):
        raise Unexpected(f"LoadCollection: {answer}")
    return {str(value): str(item_id) for item_id, value in items}


def delete(client: httpx.Client, base: str, item_ids: list[str]) -> None:
    body = [
        {
            "Action": 4,
            "ItemId": item_id,
            "Properties": [{"IsNull": False, "Modified": False, "Name": "_ItemId", "Value": None}],
        }
        for item_id in item_ids
    ]
    response = client.request("DELETE", f"{base}/json/{IDO}/deleteitems", json=body)
    answer = response.raise_for_status().json()
    if answer.get("MessageCode") != DELETE_SUCCESSFUL:
        raise Unexpected(f"DeleteItems: {answer}")


def run(goose: str, mongoose: str, batch: int) -> dict[str, Any]:
    base = f"{mongoose}{MONGOOSE_BASE}"
    done = absent = 0
    with httpx.Client(timeout=TIMEOUT) as client:
        began = time.perf_counter()
        rows = deleted(client, goose)
        client.headers["Authorization"] = token(client, base)
        for start in range(0, len(rows), batch):
            keys = [str(row["SYKEY"]) for row in rows[start : start + batch]]
            found = find(client, base, keys)
            item_ids = list(dict.fromkeys(found[k] for k in keys if k in found))
            if item_ids:
                delete(client, base, item_ids)
            done += sum(1 for k in keys if k in found)
            absent += sum(1 for k in keys if k not in found)
        took = time.perf_counter() - began
    return {"job_seconds": took, "deleted": done, "absent": absent}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--goose", required=True, help="the Goose emulator's URL")
    parser.add_argument("--mongoose", required=True, help="the Mongoose emulator's URL")
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        result = run(args.goose, args.mongoose, args.batch)
    except (httpx.HTTPError, Unexpected) as exc:
        print(f"bare: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
