"""The seed's cache-aside, against `larder serve` over the Redis protocol.

The same redis-py client and the same keys (`user:<id>`), pointed at
larder's `[resp] listen` port: `GET` reads through from the database, and
`SET` on an entity with `resp_writes = true` writes through (the database
first, then the cache). The database code is gone. Run:

    LARDER_RESP_PORT=7379 python redis_client.py
"""
import json
import os
import sys

import redis

r = redis.Redis(host="127.0.0.1", port=int(os.environ.get("LARDER_RESP_PORT", "7379")),
                password=os.environ.get("LARDER_TOKEN"))


def get_user_data(user_id):
    cached = r.get(f"user:{user_id}")
    return json.loads(cached) if cached else None


def update_user_data_write_through(user_id, data):
    r.set(f"user:{user_id}", json.dumps(data))
    return get_user_data(user_id)


def main(user_id):
    print(f"get_user_data({user_id}) ->", get_user_data(user_id))
    print(f"update_user_data_write_through({user_id}, ...) ->",
          update_user_data_write_through(user_id, {"name": "Grace", "email": "grace@example.com"}))
    print(f"get_user_data({user_id}) ->", get_user_data(user_id))
    print("get_user_data(999999999) ->", get_user_data(999999999))
    reads = r.info("larder")["entity_user"]
    print("larder's reads of user:", {k: reads[k] for k in ("l1", "hit", "stale", "negative", "miss", "bypass") if reads[k]})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 43)
