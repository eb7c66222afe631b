# The old-schema databases behind schemaN.sql (tests/test_migration.py): run with a checkout of the
# last release at schema N in an empty directory; it writes schemaN.sql, N read from the database.
#   schema 5: the release before schema 6 (git worktree add /tmp/v5 a3c6f3e)
#   schema 6: a release at schema 6 (git archive 803cafc | tar -x -C /tmp/v6)
#   bash /path/to/tests/data/make_schema.sh /tmp/v5 && cp schema5.sql /path/to/tests/data/
# PYTHON names the interpreter (default: the .venv beside this checkout).
set -e
B=${1:?usage: make_schema.sh CHECKOUT_OF_AN_OLD_RELEASE (run in an empty directory)}
PY="env PYTHONPATH=$B ${PYTHON:-$(dirname "$0")/../../.venv/bin/python}"
W="$PY -m cli.main"

mkdir -p c1 && cp $B/events.yaml $B/emitters.yaml $B/states.yaml c1/ && cp -r $B/rules c1/ && cp $(dirname "$0")/consumers_example.yaml c1/consumers.yaml
DB=$PWD/old.db
$W process --config c1 --db $DB $B/examples/events.jsonl > out1.jsonl
# redeliveries, an id conflict, garbage, unknown type, bad payload, a too-large line
head -3 $B/examples/events.jsonl > more.jsonl
sed -n 2p $B/examples/events.jsonl | sed 's/18:01:00Z","lead_id"/18:01:30Z","lead_id"/' >> more.jsonl
printf '%s\n' '{not json' '{"specversion":"1.0","id":"x1","source":"registration-form","type":"nope","data":{}}' \
  '{"specversion":"1.0","id":"x2","source":"registration-form","type":"client_webinar_registered","time":"2026-02-10T18:00:00Z","datacontenttype":"application/json","data":{"lead_id":"lead-009"}}' >> more.jsonl
python3 -c "print('{\"pad\":\"' + 'x'*3000 + '\"}')" >> more.jsonl
$W process --config c1 --db $DB --max-event-bytes 2048 more.jsonl > out2.jsonl || true
$W evaluate --config c1 --db $DB --webinar webinar-2026-02 --at 2026-02-10T21:00:00Z > ev1.jsonl
$W evaluate --config c1 --db $DB --webinar webinar-2026-02 --lead lead-001 --at 2026-02-10T22:00:00.5+01:00 > ev2.jsonl
$W feed --config c1 --db $DB reminder-sender --limit 2 > feed1.jsonl
$W feed --config c1 --db $DB screen-mirror > feed2.jsonl
# a second config (another hash): one more event and a rejection under it
cp -r c1 c2 && printf "  registration-form:\n    kind: client_tracker\n    description: the landing page form\n    events:\n      client_webinar_registered: implemented\n" >> c2/emitters.yaml
echo '{"specversion":"1.0","id":"trk-9001","source":"registration-form","type":"client_webinar_registered","time":"2026-02-11T18:00:00Z","datacontenttype":"application/json","data":{"lead_id":"lead-777","webinar_id":"webinar-2026-02","webinar_type":"live","slot_id":"slot-18h","registered_at":"2026-02-01T09:00:00Z","source":"landing-page"}}' > c2.jsonl
echo '{broken' >> c2.jsonl
$W process --config c2 --db $DB c2.jsonl > out3.jsonl || true
$W reprocess --config c2 --db $DB > rep.jsonl || true
# times an injected clock wrote in forms the engine's own clock never writes
$PY - <<'PY'
import json
from engine import Engine
ticks = iter(["2026-02-12T09:00:00.000000Z", "2026-02-12T10:00:00+01:00", "2026-02-12T09:30:00.120Z"] * 10)
e = Engine.open("c2", db="old.db", clock=lambda: next(ticks))
ev = {"specversion":"1.0","id":"trk-9002","source":"client-webinar-tracker-v2","type":"client_webinar_entered","time":"2026-02-12T09:00:00Z","datacontenttype":"application/json","data":{"webinar_id":"webinar-2026-02","timestamp":"2026-02-12T09:00:00Z","lead_id":"lead-777"}}
print(e.process(json.dumps(ev)))
ev2 = dict(ev, id="trk-9003", type="client_webinar_completed", data={"lead_id":"lead-777","webinar_id":"webinar-2026-02","webinar_type":"live","session_id":"sess-777","completed_at":"2026-02-12T10:00:00Z"})
print(e.process(json.dumps(ev2)))
e.close()
PY
# the database as SQL, so that the fixture is text a reviewer can read
$PY -c "
import sqlite3
conn = sqlite3.connect('old.db')
version = conn.execute('PRAGMA user_version').fetchone()[0]
with open(f'schema{version}.sql', 'w') as out:
    out.write(f'PRAGMA user_version = {version};\n')
    out.writelines(line + '\n' for line in conn.iterdump())
"
