"""The classic hand-written cache-aside, for comparison (not run in CI).

Every application that caches by hand grows these two functions: read the
cache, on a miss query the database and fill the cache; on a write, update
the database and then the cache. They work until many callers miss the
same key at once (each one queries the database), or a write races a fill
(an old row is cached after the new one), or Redis is down (every call
fails). `http_client.py` and `redis_client.py` are the same two functions
against `larder serve`, which handles all three.
"""
import json

import redis

r = redis.Redis(host="localhost", port=6379, db=0)


def get_user_data(user_id, db):
    cache_key = f"user:{user_id}"
    cached = r.get(cache_key)
    if cached:
        return json.loads(cached)
    user = db.query_one("SELECT * FROM users WHERE id = %s", user_id)
    if user is not None:
        r.setex(cache_key, 3600, json.dumps(user))
    return user


def update_user_data_write_through(user_id, data, db):
    db.execute("UPDATE users SET name = %s, email = %s WHERE id = %s",
               data["name"], data["email"], user_id)
    r.setex(f"user:{user_id}", 3600, json.dumps(data))
