"""The seed's cache-aside, against `larder serve` over HTTP.

No database code and no cache code: a GET reads through (a miss loads the
row once, however many callers ask), a PUT writes through (the database
first, then the row it stored is cached). Run:

    LARDER_URL=http://127.0.0.1:7070 python http_client.py
"""
import os
import sys

import requests

LARDER = os.environ.get("LARDER_URL", "http://127.0.0.1:7070")
http = requests.Session()
if os.environ.get("LARDER_TOKEN"):
    http.headers["Authorization"] = "Bearer " + os.environ["LARDER_TOKEN"]


def get_user_data(user_id):
    resp = http.get(f"{LARDER}/v1/user/{user_id}")
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    return resp.json()


def update_user_data_write_through(user_id, data):
    resp = http.put(f"{LARDER}/v1/user/{user_id}", json=data)
    resp.raise_for_status()
    return resp.json()


def main(user_id):
    print(f"get_user_data({user_id}) ->", get_user_data(user_id))
    print(f"update_user_data_write_through({user_id}, ...) ->",
          update_user_data_write_through(user_id, {"name": "Ada", "email": "ada@example.com"}))
    print(f"get_user_data({user_id}) ->", get_user_data(user_id))
    print("get_user_data(999999999) ->", get_user_data(999999999))
    reads = http.get(f"{LARDER}/v1/stats").json()["entities"]["user"]["reads"]
    print("larder's reads of user:", {k: n for k, n in reads.items() if n})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 42)
