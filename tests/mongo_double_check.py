#!/usr/bin/python3
"""
mongo_double_check.py - TAP test of tests/mongo_double.py, the MongoDB
wire-protocol double that cutover's migrator tests use instead of a mongod.

    /usr/bin/python3 tests/mongo_double_check.py

Starts the double (`mongo_double.py --port 0`) and drives it with two
clients that share no code with it:
  - pymongo 3.11 (python3-pymongo), plus raw wire messages built here for
    the handshake variants (legacy OP_QUERY isMaster, OP_MSG hello, an
    OP_MSG document sequence);
  - a small C program using libmongoc 1.23, written below and compiled at
    test time with `gcc $(pkg-config --cflags --libs libmongoc-1.0)`: if gcc
    or the library is missing its test points fail, they are not skipped.

CUTOVER_TEST_MONGO_URI=mongodb://HOST:PORT runs every pymongo and libmongoc
assertion against that server (a real mongod, unauthenticated and without
TLS) instead of starting the double; it uses the databases
cutover_double_check_PID and cutover_double_check_PID_c and drops them at
the end. The few points about the double process itself (its handshake log,
its exit on signals) are then reported as skipped.

Prints a TAP plan and one ok / not ok line per test point; a failing point
is followed by "#" lines saying why.
"""
import datetime
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

import bson
import pymongo
from bson.binary import Binary
from bson.code import Code
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from bson.timestamp import Timestamp
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.write_concern import WriteConcern

HERE = os.path.dirname(os.path.abspath(__file__))
DOUBLE = os.path.join(HERE, "mongo_double.py")
REAL_URI = os.environ.get("CUTOVER_TEST_MONGO_URI")
DB_NAME = "cutover_double_check_%d" % os.getpid()
PERF_USERS = 50000
PERF_BATCH = 1000
PERF_LIMIT_S = 20.0

CHECKS = []     # (description, function, applies only to the double)


def check(description, double_only=False):
    """Register a test point; they run in the order they are defined."""
    def register(function):
        """Add function to CHECKS."""
        CHECKS.append((description, function, double_only))
        return function
    return register


def expect_error(code, call, *args, **kwargs):
    """Run call, which must fail with a server error of this code; return it."""
    try:
        call(*args, **kwargs)
    except OperationFailure as error:
        assert error.code == code, "expected code %d, got %r: %s" % (code, error.code, error.details)
        return error
    raise AssertionError("expected an error with code %d, the call succeeded" % code)


class Context:
    """What the test points share: the server, clients and results."""

    def __init__(self):
        """Nothing started yet."""
        self.process = None
        self.stderr_path = None
        self.host = None
        self.port = None
        self.uri = None
        self.client = None
        self.db = None
        self.c_results = {}
        self.c_output = ""
        self.workdir = tempfile.mkdtemp(prefix="mongo_double_check.")

    def start_double(self, *extra):
        """Start a double; return (process, port, stderr path)."""
        stderr_path = os.path.join(self.workdir, "double-%d.log" % len(os.listdir(self.workdir)))
        with open(stderr_path, "w") as stderr:
            process = subprocess.Popen(["/usr/bin/python3", DOUBLE, "--port", "0"] + list(extra),
                                       stdout=subprocess.PIPE, stderr=stderr, bufsize=0)
        output = b""
        deadline = time.monotonic() + 15
        while output.count(b"\n") < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                output += chunk
        lines = output.decode(errors="replace").split("\n")
        if len(lines) < 3 or not lines[0].startswith("port ") or lines[1] != "ready":
            process.kill()
            raise RuntimeError("the double did not start: stdout %r, stderr %r"
                               % (lines, open(stderr_path).read()[-2000:]))
        return process, int(lines[0].split()[1]), stderr_path

    def open(self):
        """Start the double (or use CUTOVER_TEST_MONGO_URI) and connect."""
        if REAL_URI:
            self.uri = REAL_URI
            self.host, self.port = pymongo.uri_parser.parse_uri(REAL_URI)["nodelist"][0]
        else:
            self.process, self.port, self.stderr_path = self.start_double()
            self.host = "127.0.0.1"
            self.uri = "mongodb://127.0.0.1:%d/" % self.port
        self.client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=5000,
                                          socketTimeoutMS=60000)
        self.db = self.client[DB_NAME]

    def close(self):
        """Drop the test databases, close the client, stop the double."""
        if self.client is not None:
            try:
                self.client.drop_database(DB_NAME)
                self.client.drop_database(DB_NAME + "_c")
            except pymongo.errors.PyMongoError:
                pass
            self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def double_log(self):
        """What the double has written on stderr so far."""
        if not self.stderr_path:
            return ""
        with open(self.stderr_path) as log:
            return log.read()


CTX = Context()


# ------------------------------------------------------------- raw wire I/O

def _recv_exact(sock, length):
    """Exactly length bytes from sock."""
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            raise AssertionError("the server closed the connection")
        data += chunk
    return data


def wire_exchange(sock, opcode, body, request_id, expect_reply=True):
    """Send one message; return (responseTo, opcode, body) of the reply."""
    sock.sendall(struct.pack("<iiii", 16 + len(body), request_id, 0, opcode) + body)
    if not expect_reply:
        return None
    length, _, response_to, reply_opcode = struct.unpack("<iiii", _recv_exact(sock, 16))
    return response_to, reply_opcode, _recv_exact(sock, length - 16)


def raw_op_query_command(sock, db, command, request_id):
    """A command over legacy OP_QUERY on db.$cmd; returns (responseTo, reply doc)."""
    body = struct.pack("<i", 0) + ("%s.$cmd" % db).encode() + b"\0"
    body += struct.pack("<ii", 0, -1) + bson.encode(command)
    response_to, opcode, reply = wire_exchange(sock, 2004, body, request_id)
    assert opcode == 1, "OP_QUERY answered with opcode %d, not OP_REPLY" % opcode
    flags, cursor_id, _, returned = struct.unpack("<iqii", reply[:20])
    assert returned == 1 and cursor_id == 0, "OP_REPLY to a command has %d documents" % returned
    return response_to, bson.decode(reply[20:])


def raw_op_msg(sock, command, request_id, sequences=(), flags=0):
    """A command over OP_MSG with optional kind-1 document sequences."""
    body = struct.pack("<I", flags) + b"\0" + bson.encode(command)
    for identifier, docs in sequences:
        payload = identifier.encode() + b"\0" + b"".join(bson.encode(doc) for doc in docs)
        body += b"\1" + struct.pack("<i", 4 + len(payload)) + payload
    more_to_come = bool(flags & 2)
    exchange = wire_exchange(sock, 2013, body, request_id, expect_reply=not more_to_come)
    if more_to_come:
        return None, None
    response_to, opcode, reply = exchange
    assert opcode == 2013, "OP_MSG answered with opcode %d" % opcode
    assert reply[4] == 0, "OP_MSG reply does not start with a kind-0 section"
    return response_to, bson.decode(reply[5:])


def raw_connection():
    """A plain TCP connection to the server under test."""
    return socket.create_connection((CTX.host, CTX.port), timeout=10)


# --------------------------------------------------------------- handshakes

@check("server answers ping")
def _ping():
    """The pymongo client connects and pings."""
    assert CTX.client.admin.command("ping")["ok"] == 1


@check("legacy OP_QUERY isMaster handshake on admin.$cmd (helloOk, no compression)")
def _legacy_handshake():
    """What libmongoc and pymongo send first, byte for byte the old way."""
    with raw_connection() as sock:
        response_to, reply = raw_op_query_command(sock, "admin", {
            "isMaster": 1, "helloOk": True, "compression": ["zstd", "zlib", "snappy"],
            "client": {"driver": {"name": "mongo_double_check", "version": "1"}}}, 7001)
    assert response_to == 7001, "responseTo %d" % response_to
    assert reply["ismaster"] is True and reply["ok"] == 1, reply
    assert reply["helloOk"] is True, reply
    assert reply["maxWireVersion"] >= 13 and reply["minWireVersion"] == 0, reply
    assert reply["maxBsonObjectSize"] == 16 * 1024 * 1024, reply
    assert reply["maxMessageSizeBytes"] == 48000000, reply
    assert reply["maxWriteBatchSize"] == 100000, reply
    assert isinstance(reply["localTime"], datetime.datetime), reply
    assert reply["logicalSessionTimeoutMinutes"] == 30, reply
    assert isinstance(reply["connectionId"], int), reply
    if not REAL_URI:
        assert reply["maxWireVersion"] == 13, reply
        assert "compression" not in reply, "the double agreed to compress: %r" % reply


@check("OP_MSG hello handshake and isMaster alias")
def _op_msg_hello():
    """hello over OP_MSG reports isWritablePrimary; ismaster works too."""
    with raw_connection() as sock:
        response_to, reply = raw_op_msg(sock, {"hello": 1, "$db": "admin"}, 7002)
        assert response_to == 7002, response_to
        assert reply["isWritablePrimary"] is True and reply["ok"] == 1, reply
        assert reply["maxWireVersion"] >= 13 and "connectionId" in reply, reply
        _, legacy = raw_op_msg(sock, {"ismaster": 1, "$db": "admin"}, 7003)
        assert legacy["ismaster"] is True, legacy
        _, other = raw_op_msg(sock, {"hello": 1, "$db": "admin"}, 7004)
        assert other["connectionId"] == reply["connectionId"], "connectionId changed on one connection"


@check("OP_MSG kind-1 document sequence insert, and a moreToCome (w:0) insert")
def _op_msg_sequences():
    """Raw OP_MSG with a 'documents' sequence; then one with no reply."""
    with raw_connection() as sock:
        _, reply = raw_op_msg(sock, {"insert": "raw", "$db": DB_NAME},
                              7010, sequences=[("documents", [{"_id": 1}, {"_id": 2, "a": "x"}])])
        assert reply["ok"] == 1 and reply["n"] == 2, reply
        raw_op_msg(sock, {"insert": "raw", "$db": DB_NAME, "writeConcern": {"w": 0}},
                   7011, sequences=[("documents", [{"_id": 3}])], flags=2)
        _, reply = raw_op_msg(sock, {"count": "raw", "$db": DB_NAME}, 7012)
        assert reply["n"] == 3, reply


@check("buildInfo and endSessions")
def _build_info():
    """buildInfo reports 5.0.0 (the double); endSessions is accepted."""
    info = CTX.client.admin.command("buildInfo")
    assert "version" in info, info
    if not REAL_URI:
        assert info["version"] == "5.0.0", info
    assert CTX.client.admin.command("endSessions", [])["ok"] == 1


# -------------------------------------------------------------------- writes

@check("insert: server-generated ObjectId _id comes first")
def _insert_generated_id():
    """A document sent without _id gets an ObjectId, as the first field."""
    reply = CTX.db.command("insert", "gen", documents=[{"name": "a"}, {"name": "b"}])
    assert reply["n"] == 2, reply
    docs = list(CTX.db.gen.find())
    assert len(docs) == 2 and all(isinstance(doc["_id"], ObjectId) for doc in docs), docs
    assert all(list(doc)[0] == "_id" for doc in docs), docs
    assert docs[0]["_id"] != docs[1]["_id"]


@check("insert: duplicate _id is E11000 (code 11000); ordered stops, unordered goes on")
def _insert_duplicates():
    """Ordered and unordered batches with a duplicate in the middle."""
    coll = CTX.db.dups
    coll.insert_one({"_id": 2})
    try:
        coll.insert_many([{"_id": 1}, {"_id": 2}, {"_id": 3}], ordered=True)
        raise AssertionError("no BulkWriteError")
    except BulkWriteError as error:
        details = error.details
        assert details["nInserted"] == 1, details
        assert [e["code"] for e in details["writeErrors"]] == [11000], details
        assert details["writeErrors"][0]["index"] == 1, details
        assert "E11000 duplicate key error" in details["writeErrors"][0]["errmsg"], details
    try:
        coll.insert_many([{"_id": 4}, {"_id": 2}, {"_id": 5}, {"_id": 1.0}], ordered=False)
        raise AssertionError("no BulkWriteError")
    except BulkWriteError as error:
        details = error.details
        assert details["nInserted"] == 2, details
        assert [e["index"] for e in details["writeErrors"]] == [1, 3], details
    assert sorted(doc["_id"] for doc in coll.find()) == [1, 2, 4, 5]


@check("update: $set, $unset, $inc, $min, $max; nModified 0 for a no-op; multi")
def _update_operators():
    """The update operators the migrator needs, as mongod applies them."""
    coll = CTX.db.upd
    coll.insert_many([{"_id": i, "n": i, "tag": "t", "sub": {"x": 1}} for i in range(5)])
    result = coll.update_one({"_id": 1}, {"$set": {"name": "one", "sub.y": 2},
                                          "$unset": {"tag": ""}, "$inc": {"n": 10, "c": Int64(5)}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert coll.find_one({"_id": 1}) == {"_id": 1, "n": 11, "sub": {"x": 1, "y": 2}, "name": "one",
                                         "c": 5}, coll.find_one({"_id": 1})
    assert isinstance(coll.find_one({"_id": 1})["c"], Int64)
    result = coll.update_one({"_id": 1}, {"$set": {"name": "one"}})
    assert (result.matched_count, result.modified_count) == (1, 0)
    coll.update_one({"_id": 2}, {"$max": {"n": 7}, "$min": {"low": 3}})
    coll.update_one({"_id": 2}, {"$max": {"n": 5}, "$min": {"low": 4}})
    assert coll.find_one({"_id": 2}, {"n": 1, "low": 1}) == {"_id": 2, "n": 7, "low": 3}
    result = coll.update_many({"tag": "t"}, {"$inc": {"n": 1.5}})
    assert (result.matched_count, result.modified_count) == (4, 4)
    assert coll.find_one({"_id": 0})["n"] == 1.5
    expect_error(66, coll.update_one, {"_id": 3}, {"$set": {"_id": 99}})
    expect_error(14, coll.update_one, {"_id": 3}, {"$inc": {"tag": 1}})
    expect_error(9, coll.update_one, {"_id": 3}, {"$frobnicate": {"n": 1}})
    expect_error(40, coll.update_one, {"_id": 3}, {"$set": {"sub": 1}, "$inc": {"sub.x": 1}})


@check("update: replacement keeps _id; upsert inserts query equality fields + $setOnInsert")
def _update_replace_and_upsert():
    """replace_one, upserts and the upserted [{index, _id}] reply."""
    coll = CTX.db.ups
    coll.insert_one({"_id": "a", "x": 1, "y": 2})
    result = coll.replace_one({"_id": "a"}, {"z": 3})
    assert result.modified_count == 1 and coll.find_one({"_id": "a"}) == {"_id": "a", "z": 3}
    result = coll.update_one({"email": "e@x", "tenant": {"$eq": 7}, "age": {"$gt": 3}},
                             {"$set": {"name": "E"}, "$setOnInsert": {"created": True}}, upsert=True)
    assert result.matched_count == 0 and isinstance(result.upserted_id, ObjectId), result.raw_result
    doc = coll.find_one({"_id": result.upserted_id})
    assert doc == {"_id": result.upserted_id, "email": "e@x", "tenant": 7, "name": "E", "created": True}, doc
    assert list(doc)[0] == "_id", doc
    again = coll.update_one({"email": "e@x"}, {"$set": {"name": "E2"}, "$setOnInsert": {"created": False}},
                            upsert=True)
    assert again.upserted_id is None and again.modified_count == 1
    assert coll.find_one({"email": "e@x"})["created"] is True
    reply = CTX.db.command("update", "ups", updates=[
        {"q": {"_id": "a"}, "u": {"$set": {"z": 4}}, "upsert": True},
        {"q": {"_id": "b"}, "u": {"v": 1}, "upsert": True},
        {"q": {"_id": "c"}, "u": {"$set": {"v": 2}}, "upsert": True}],
        writeConcern={"w": "majority", "j": True})
    assert reply["n"] == 3 and reply["nModified"] == 1, reply
    assert reply["upserted"] == [{"index": 1, "_id": "b"}, {"index": 2, "_id": "c"}], reply
    assert coll.find_one({"_id": "b"}) == {"_id": "b", "v": 1}


@check("delete: limit 1 and limit 0")
def _delete():
    """delete_one removes the first match, delete_many all of them."""
    coll = CTX.db.dels
    coll.insert_many([{"_id": i, "g": i % 2} for i in range(10)])
    assert coll.delete_one({"g": 1}).deleted_count == 1
    assert coll.find_one({"g": 1})["_id"] == 3
    assert coll.delete_many({"g": 0}).deleted_count == 5
    assert coll.delete_many({"g": 5}).deleted_count == 0
    assert sorted(doc["_id"] for doc in coll.find()) == [3, 5, 7, 9]


@check("findAndModify: update (new/old, sort, fields), upsert, replace, remove")
def _find_and_modify():
    """pymongo's find_one_and_* helpers over findAndModify."""
    coll = CTX.db.fam
    coll.insert_many([{"_id": i, "q": "w", "n": i} for i in range(5)])
    after = coll.find_one_and_update({"q": "w"}, {"$inc": {"n": 100}}, sort=[("n", -1)],
                                     projection={"n": 1, "_id": 0},
                                     return_document=pymongo.ReturnDocument.AFTER)
    assert after == {"n": 104}, after
    before = coll.find_one_and_update({"_id": 0}, {"$set": {"n": -1}})
    assert before == {"_id": 0, "q": "w", "n": 0}, before
    upserted = coll.find_one_and_update({"_id": "new"}, {"$inc": {"logins": 1}}, upsert=True,
                                        return_document=pymongo.ReturnDocument.AFTER)
    assert upserted == {"_id": "new", "logins": 1}, upserted
    assert coll.find_one_and_update({"_id": "none"}, {"$set": {"a": 1}}) is None
    replaced = coll.find_one_and_replace({"_id": 1}, {"r": True},
                                         return_document=pymongo.ReturnDocument.AFTER)
    assert replaced == {"_id": 1, "r": True}, replaced
    removed = coll.find_one_and_delete({"q": "w"}, sort=[("_id", -1)])
    assert removed["_id"] == 4 and coll.find_one({"_id": 4}) is None, removed
    reply = CTX.db.command("findAndModify", "fam", query={"_id": "gone"}, remove=True)
    assert reply["value"] is None and reply["lastErrorObject"]["n"] == 0, reply
    expect_error(9, CTX.db.command, "findAndModify", "fam", query={})


# --------------------------------------------------------------------- reads

def _people():
    """A collection of varied documents for the query tests."""
    coll = CTX.db.people
    if coll.estimated_document_count() == 0:
        coll.insert_many([
            {"_id": 1, "name": "ann", "age": 30, "tags": ["a", "b"], "addr": {"city": "Oslo"}},
            {"_id": 2, "name": "bob", "age": Int64(25), "tags": ["b"], "addr": {"city": "Rome"}},
            {"_id": 3, "name": "cid", "age": 30.5, "tags": [], "nick": None},
            {"_id": 4, "name": "dee", "age": "30", "addr": [{"city": "Oslo"}, {"city": "Bern"}]},
            {"_id": 5, "name": "eve", "age": Decimal128("41.0"), "tags": ["c", "a"]},
        ])
    return coll


def _ids(cursor):
    """The _ids a query returned, in order."""
    return [doc["_id"] for doc in cursor]


@check("find: $in, $nin, $eq, $ne, $exists, null and missing")
def _find_membership():
    """Membership and existence operators, with array element matching."""
    coll = _people()
    assert _ids(coll.find({"_id": {"$in": [5, 1, 9]}})) == [1, 5]
    assert _ids(coll.find({"tags": {"$in": ["c", "x"]}})) == [5]
    assert _ids(coll.find({"tags": "b"})) == [1, 2]
    assert _ids(coll.find({"tags": ["b"]})) == [2]
    assert _ids(coll.find({"name": {"$nin": ["ann", "bob"]}})) == [3, 4, 5]
    assert _ids(coll.find({"name": {"$eq": "cid"}})) == [3]
    assert _ids(coll.find({"age": {"$ne": 30}})) == [2, 3, 4, 5]
    assert _ids(coll.find({"nick": {"$exists": True}})) == [3]
    assert _ids(coll.find({"tags": {"$exists": False}})) == [4]
    assert _ids(coll.find({"nick": None})) == [1, 2, 3, 4, 5]
    assert _ids(coll.find({"nick": {"$ne": None}})) == []


@check("find: comparisons by BSON type (int/long/double/decimal as numbers)")
def _find_comparisons():
    """$gt etc. compare numbers across types, never strings with numbers."""
    coll = _people()
    assert _ids(coll.find({"age": {"$gte": 30}})) == [1, 3, 5]
    assert _ids(coll.find({"age": {"$gt": 25, "$lt": 41}})) == [1, 3]
    assert _ids(coll.find({"age": {"$lte": Int64(25)}})) == [2]
    assert _ids(coll.find({"age": {"$gt": "1"}})) == [4]
    assert _ids(coll.find({"age": 30.0})) == [1]
    assert _ids(coll.find({"age": 41})) == [5]


@check("find: $and, $or, $nor, dotted paths into subdocuments and arrays")
def _find_logic_and_paths():
    """Logical operators and dotted paths."""
    coll = _people()
    assert _ids(coll.find({"addr.city": "Oslo"})) == [1, 4]
    assert _ids(coll.find({"addr.0.city": "Bern"})) == []
    assert _ids(coll.find({"addr.1.city": "Bern"})) == [4]
    assert _ids(coll.find({"$or": [{"name": "bob"}, {"age": {"$gt": 40}}]})) == [2, 5]
    assert _ids(coll.find({"$and": [{"age": {"$gte": 30}}, {"tags": "a"}]})) == [1, 5]
    assert _ids(coll.find({"$nor": [{"tags": "a"}, {"tags": "b"}]})) == [3, 4]


@check("find: unknown operator is BadValue (code 2) naming it")
def _find_unknown_operator():
    """Errors a query can get."""
    error = expect_error(2, lambda: list(CTX.db.people.find({"age": {"$frob": 1}})))
    assert "$frob" in str(error), error
    error = expect_error(2, lambda: list(CTX.db.people.find({"$frob": [{}]})))
    assert "$frob" in str(error), error


@check("find: multi-key sort across mixed types, skip, limit")
def _find_sort():
    """Sort in BSON order: null < numbers < strings < ObjectId < dates."""
    coll = CTX.db.sorting
    oid = ObjectId()
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000)
    coll.insert_many([
        {"_id": 1, "k": "b", "g": 1}, {"_id": 2, "k": 10, "g": 2}, {"_id": 3, "k": oid, "g": 1},
        {"_id": 4, "k": when, "g": 2}, {"_id": 5, "k": None, "g": 1}, {"_id": 6, "g": 2},
        {"_id": 7, "k": 2.5, "g": 1}, {"_id": 8, "k": Int64(3), "g": 2}, {"_id": 9, "k": "a", "g": 1},
    ])
    assert _ids(coll.find().sort("k", 1)) == [5, 6, 7, 8, 2, 9, 1, 3, 4]
    assert _ids(coll.find().sort("k", -1)) == [4, 3, 1, 9, 2, 8, 7, 5, 6]
    assert _ids(coll.find().sort([("g", -1), ("_id", 1)])) == [2, 4, 6, 8, 1, 3, 5, 7, 9]
    assert _ids(coll.find().sort([("g", 1), ("k", -1)]).skip(1).limit(3)) == [1, 9, 7]
    assert _ids(coll.find({"g": 1}).sort("_id", -1).limit(2)) == [9, 7]


@check("find: projection (inclusion, exclusion, _id, dotted); mixing is an error")
def _find_projection():
    """Projections keep the document's own field order."""
    coll = _people()
    assert coll.find_one({"_id": 1}, {"age": 1, "name": 1}) == {"_id": 1, "name": "ann", "age": 30}
    assert list(coll.find_one({"_id": 1}, {"age": 1, "name": 1})) == ["_id", "name", "age"]
    assert coll.find_one({"_id": 1}, {"name": 1, "_id": 0}) == {"name": "ann"}
    assert coll.find_one({"_id": 2}, {"tags": 0, "addr": 0, "age": 0}) == {"_id": 2, "name": "bob"}
    assert coll.find_one({"_id": 1}, {"addr.city": 1}) == {"_id": 1, "addr": {"city": "Oslo"}}
    assert coll.find_one({"_id": 1}, {"_id": 0, "tags": 0, "addr": 0}) == {"name": "ann", "age": 30}
    expect_error(31254, coll.find_one, {"_id": 1}, {"name": 1, "age": 0})


@check("find batchSize + getMore + killCursors (raw commands); CursorNotFound after")
def _cursors():
    """Server-side cursors: batches, the final id 0, killing, code 43."""
    coll = CTX.db.cursors
    coll.insert_many([{"_id": i} for i in range(10)])
    first = CTX.db.command("find", "cursors", batchSize=4, sort={"_id": 1})["cursor"]
    assert [d["_id"] for d in first["firstBatch"]] == [0, 1, 2, 3] and first["id"] != 0, first
    assert first["ns"] == "%s.cursors" % DB_NAME, first
    more = CTX.db.command("getMore", first["id"], collection="cursors", batchSize=3)["cursor"]
    assert [d["_id"] for d in more["nextBatch"]] == [4, 5, 6] and more["id"] == first["id"], more
    rest = CTX.db.command("getMore", first["id"], collection="cursors")["cursor"]
    assert [d["_id"] for d in rest["nextBatch"]] == [7, 8, 9] and rest["id"] == 0, rest
    cursor = CTX.db.command("find", "cursors", batchSize=2)["cursor"]
    killed = CTX.db.command("killCursors", "cursors", cursors=[cursor["id"]])
    assert killed["cursorsKilled"] == [cursor["id"]], killed
    expect_error(43, CTX.db.command, "getMore", cursor["id"], collection="cursors")
    whole = CTX.db.command("find", "cursors", limit=5, batchSize=100)["cursor"]
    assert len(whole["firstBatch"]) == 5 and whole["id"] == 0, whole
    single = CTX.db.command("find", "cursors", batchSize=3, singleBatch=True)["cursor"]
    assert len(single["firstBatch"]) == 3 and single["id"] == 0, single


@check("pymongo cursors: batch_size, limit, and an exhaust cursor (legacy OP_QUERY)")
def _pymongo_cursors():
    """Cursor iteration through getMore, and pymongo's OP_QUERY exhaust stream."""
    coll = CTX.db.cursors2
    coll.insert_many([{"_id": i, "v": i % 7} for i in range(250)])
    assert _ids(coll.find(batch_size=7).sort("_id", 1)) == list(range(250))
    assert _ids(coll.find({"v": 3}, batch_size=5).limit(12)) == [3 + 7 * i for i in range(12)]
    exhaust = coll.find({"v": {"$lt": 5}}, batch_size=20, cursor_type=pymongo.CursorType.EXHAUST)
    assert sorted(_ids(exhaust)) == [i for i in range(250) if i % 7 < 5]


@check("an exhaust stream does not hold up other connections (read one, upsert through another)")
def _exhaust_while_writing():
    """A migrator streaming users in while it writes elsewhere must not stall."""
    source = CTX.db.exhaust_source
    # 20 MB: more than the socket buffers hold, so the stream must wait for the reader
    source.insert_many([{"_id": i, "pad": "x" * 2000} for i in range(10000)])
    other = pymongo.MongoClient(CTX.uri, serverSelectionTimeoutMS=5000)
    seen = []
    errors = []

    def migrate():
        """Read the exhaust stream, upserting every 500th document elsewhere."""
        try:
            for doc in source.find({}, batch_size=500, cursor_type=pymongo.CursorType.EXHAUST):
                seen.append(doc["_id"])
                if doc["_id"] % 500 == 0:
                    other[DB_NAME].exhaust_target.update_one({"_id": doc["_id"]}, {"$set": {"seen": True}},
                                                             upsert=True)
        except Exception as error:
            errors.append(repr(error))
    thread = threading.Thread(target=migrate, daemon=True)
    thread.start()
    thread.join(60)
    other.close()
    assert not thread.is_alive(), "stalled after %d documents" % len(seen)
    assert not errors, errors
    assert len(seen) == 10000 and CTX.db.exhaust_target.count_documents({}) == 20
    CTX.db.drop_collection("exhaust_source")


@check("count, count_documents (aggregate $match/$skip/$limit/$group), estimated count")
def _counts():
    """The three ways drivers count."""
    coll = CTX.db.cursors2
    assert coll.count_documents({}) == 250
    assert coll.count_documents({"v": {"$in": [1, 2]}}) == 72
    assert coll.count_documents({"v": 1}, skip=30, limit=10) == 6
    assert coll.count_documents({"nope": 1}) == 0
    assert coll.estimated_document_count() == 250
    assert CTX.db.command("count", "cursors2", query={"v": 6})["n"] == 35
    assert CTX.db.command("count", "absent")["n"] == 0
    reply = CTX.db.command("aggregate", "cursors2", pipeline=[
        {"$match": {"v": {"$lt": 3}}}, {"$group": {"_id": "$v", "n": {"$sum": 1}, "s": {"$sum": "$_id"}}}],
        cursor={})
    groups = sorted((g["_id"], g["n"], g["s"]) for g in reply["cursor"]["firstBatch"])
    assert groups == [(v, len(range(v, 250, 7)), sum(range(v, 250, 7))) for v in range(3)], groups
    error = expect_error(40324, CTX.db.command, "aggregate", "cursors2", pipeline=[{"$frob": {}}], cursor={})
    assert "$frob" in str(error), error


# ------------------------------------------------------------------ indexes

@check("createIndexes: unique index enforced on insert and update (E11000); idempotent")
def _unique_index():
    """A unique email index as the service's database would have."""
    coll = CTX.db.idx
    coll.insert_many([{"_id": i, "email": "u%d@x" % i} for i in range(3)])
    assert coll.create_index("email", unique=True) == "email_1"
    reply = CTX.db.command("createIndexes", "idx",
                           indexes=[{"key": {"email": 1}, "name": "email_1", "unique": True}])
    assert reply["numIndexesBefore"] == reply["numIndexesAfter"] == 2, reply
    try:
        coll.insert_one({"_id": 9, "email": "u1@x"})
        raise AssertionError("duplicate email inserted")
    except DuplicateKeyError as error:
        assert error.code == 11000, error.details
        assert error.details["keyPattern"] == {"email": 1}, error.details
        assert error.details["keyValue"] == {"email": "u1@x"}, error.details
    try:
        coll.update_one({"_id": 2}, {"$set": {"email": "u0@x"}})
        raise AssertionError("update made a duplicate email")
    except DuplicateKeyError as error:
        assert error.code == 11000, error.details
    coll.update_one({"_id": 2}, {"$set": {"email": "u2@y"}})
    coll.insert_one({"_id": 10, "email": "u2@x"})
    names = [index["name"] for index in coll.list_indexes()]
    assert names == ["_id_", "email_1"], names
    assert coll.index_information()["email_1"]["unique"] is True


@check("createIndexes: conflicts (85, 86), duplicate data (11000), compound keys")
def _index_conflicts():
    """Index creation errors as mongod reports them."""
    coll = CTX.db.idx2
    coll.insert_many([{"_id": 1, "a": 1, "b": 1}, {"_id": 2, "a": 1, "b": 2}])
    expect_error(11000, coll.create_index, "a", unique=True)
    coll.create_index([("a", 1), ("b", 1)], unique=True, name="ab")
    expect_error(85, coll.create_index, [("a", 1), ("b", 1)], name="other")
    expect_error(86, coll.create_index, [("b", 1)], name="ab")
    expect_error(11000, coll.insert_one, {"_id": 3, "a": 1, "b": 2})
    coll.insert_one({"_id": 4, "a": 2, "b": 2})
    assert [index["name"] for index in coll.list_indexes()] == ["_id_", "ab"]


@check("drop, dropDatabase, listCollections; listIndexes/drop of a missing collection (26)")
def _drop():
    """Collections come and go as on mongod."""
    CTX.db.gone.insert_one({"_id": 1})
    assert "gone" in CTX.db.list_collection_names()
    reply = CTX.db.command("drop", "gone")
    assert reply["ok"] == 1, reply
    assert "gone" not in CTX.db.list_collection_names()
    expect_error(26, CTX.db.command, "drop", "gone")
    expect_error(26, CTX.db.command, "listIndexes", "gone")
    other = CTX.client[DB_NAME + "_tmp"]
    other.t.insert_one({})
    CTX.client.drop_database(other.name)
    assert other.list_collection_names() == []


@check("unknown command is CommandNotFound (code 59)")
def _unknown_command():
    """Anything the double does not implement, as mongod answers it."""
    error = expect_error(59, CTX.db.command, "frobnicate", 1)
    assert error.details["codeName"] == "CommandNotFound", error.details
    assert "frobnicate" in error.details["errmsg"], error.details


# ------------------------------------------------------------ other checks

@check("writeConcern {w: majority, j: true} is acknowledged")
def _write_concern():
    """Majority and journaled writes are acknowledged."""
    coll = CTX.db.get_collection("wc", write_concern=WriteConcern(w="majority", j=True))
    assert coll.insert_one({"_id": 1}).acknowledged
    assert coll.update_one({"_id": 1}, {"$set": {"x": 1}}).modified_count == 1
    assert coll.delete_one({"_id": 1}).deleted_count == 1
    unacknowledged = CTX.db.get_collection("wc", write_concern=WriteConcern(w=0))
    unacknowledged.insert_one({"_id": 2})
    deadline = time.monotonic() + 5
    while CTX.db.wc.find_one({"_id": 2}) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert CTX.db.wc.find_one({"_id": 2}) == {"_id": 2}


@check("BSON round trip is byte-exact (int32/64, double, decimal, dates, UUIDs, ...)")
def _bson_fidelity():
    """Documents come back with the very bytes they were stored with."""
    original = bson.encode({
        "_id": ObjectId(), "i32": 7, "i64": Int64(7), "dbl": -0.0, "dec": Decimal128("1.10"),
        "date": datetime.datetime(2001, 2, 3, 4, 5, 6, 789000), "uuid4": Binary(uuid.uuid4().bytes, 4),
        "uuid3": Binary(uuid.uuid4().bytes, 3), "bin": Binary(b"\0\1\2", 0), "t": True, "null": None,
        "re": Regex("^a.*", "i"), "ts": Timestamp(1, 2), "code": Code("x"), "min": MinKey(),
        "max": MaxKey(), "nested": {"a": [1, {"b": "é"}, []]},
    })
    raw = CTX.db.get_collection("raw_bson", codec_options=CodecOptions(document_class=RawBSONDocument))
    raw.insert_one(RawBSONDocument(original))
    back = raw.find_one({"_id": bson.decode(original)["_id"]})
    assert back is not None, "the document was not found"
    assert back.raw == original, "stored and returned bytes differ:\n%r\n%r" % (original, back.raw)


@check("concurrent clients: 8 threads x 100 $inc on one document, and inserts")
def _thread_safety():
    """The store is consistent under concurrent connections."""
    coll = CTX.db.concurrent
    coll.insert_one({"_id": "counter", "n": 0})
    errors = []

    def worker(number):
        """Increment the counter and insert documents of its own."""
        client = pymongo.MongoClient(CTX.uri, serverSelectionTimeoutMS=5000)
        try:
            mine = client[DB_NAME].concurrent
            for step in range(100):
                mine.update_one({"_id": "counter"}, {"$inc": {"n": 1}})
                mine.insert_one({"_id": "w%d-%d" % (number, step)})
        except Exception as error:
            errors.append(repr(error))
        finally:
            client.close()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert coll.find_one({"_id": "counter"})["n"] == 800
    assert coll.count_documents({}) == 801


@check("throughput: %d users in batches of %d written and read back in < %d s"
       % (PERF_USERS, PERF_BATCH, PERF_LIMIT_S))
def _throughput():
    """The size of a migrator test run, timed."""
    coll = CTX.db.perf_users
    coll.create_index("email", unique=True)
    started = time.monotonic()
    for batch in range(PERF_USERS // PERF_BATCH):
        coll.insert_many([{"_id": "user-%06d" % n, "email": "user%d@example.com" % n, "name": "User %d" % n,
                           "created": datetime.datetime(2020, 1, 1), "version": Int64(1), "tags": ["a", "b"]}
                          for n in range(batch * PERF_BATCH, (batch + 1) * PERF_BATCH)])
    written = time.monotonic()
    count = 0
    for doc in coll.find({}, batch_size=PERF_BATCH):
        count += 1
    done = time.monotonic()
    print("# pymongo: %d users inserted in %.2f s (%.0f/s), read back in %.2f s (%.0f/s)"
          % (PERF_USERS, written - started, PERF_USERS / (written - started),
             done - written, count / (done - written)))
    assert count == PERF_USERS, count
    assert done - started < PERF_LIMIT_S, "took %.1f s" % (done - started)
    CTX.db.drop_collection("perf_users")


# ---------------------------------------------------------------- libmongoc

C_CHECKS = [
    "handshake_ping", "server_description", "hello_op_msg", "pooled_client",
    "create_unique_index", "create_index_again", "insert_many", "insert_duplicate_email",
    "find_in_sort_limit_projection", "find_batches_getmore", "kill_cursor", "exhaust_cursor",
    "update_upsert", "update_duplicate_email", "update_version_guards",
    "update_many_majority_journaled", "find_and_modify_upsert", "find_and_modify_remove",
    "delete_one_and_many", "count_documents", "estimated_document_count", "list_indexes",
    "unknown_command", "drop", "throughput_50k",
]

C_SOURCE = r"""
/* mongo_double_check's libmongoc client: drives a MongoDB server (the double
 * or a real mongod) through libmongoc and prints one line per check,
 * "ok NAME" or "not ok NAME: detail".   usage: check URI DBNAME */
#include <mongoc/mongoc.h>
#include <stdio.h>
#include <string.h>

static int getmores, kill_cursors;

/* Print one check's result. */
static void
report (const char *name, bool ok, const char *detail)
{
   if (ok)
      printf ("ok %s\n", name);
   else
      printf ("not ok %s: %s\n", name, detail ? detail : "");
   fflush (stdout);
}

/* Command monitoring: count the getMore and killCursors commands sent. */
static void
on_started (const mongoc_apm_command_started_t *event)
{
   const char *name = mongoc_apm_command_started_get_command_name (event);
   if (!strcmp (name, "getMore"))
      getmores++;
   else if (!strcmp (name, "killCursors"))
      kill_cursors++;
}

/* A numeric field (dotted path) of doc, or -1. */
static int64_t
int_field (const bson_t *doc, const char *path)
{
   bson_iter_t it, found;
   if (doc && bson_iter_init (&it, doc) && bson_iter_find_descendant (&it, path, &found) &&
       BSON_ITER_HOLDS_NUMBER (&found))
      return bson_iter_as_int64 (&found);
   return -1;
}

/* A string field (dotted path) of doc, or "". */
static const char *
str_field (const bson_t *doc, const char *path)
{
   bson_iter_t it, found;
   if (doc && bson_iter_init (&it, doc) && bson_iter_find_descendant (&it, path, &found) &&
       BSON_ITER_HOLDS_UTF8 (&found))
      return bson_iter_utf8 (&found, NULL);
   return "";
}

/* A reply as relaxed extended JSON into buf, for failure details. */
static const char *
as_json (const bson_t *doc, char *buf, size_t size)
{
   char *json = bson_as_relaxed_extended_json (doc, NULL);
   snprintf (buf, size, "%s", json ? json : "?");
   bson_free (json);
   return buf;
}

/* ping on client's admin database. */
static bool
ping (mongoc_client_t *client, bson_error_t *error)
{
   bson_t *cmd = BCON_NEW ("ping", BCON_INT32 (1));
   bool ok = mongoc_client_command_simple (client, "admin", cmd, NULL, NULL, error);
   bson_destroy (cmd);
   return ok;
}

/* Read every document of a cursor, destroy it; the count, -1 on error. */
static int
drain (mongoc_cursor_t *cursor, bson_error_t *error)
{
   const bson_t *doc;
   int n = 0;
   while (mongoc_cursor_next (cursor, &doc))
      n++;
   if (mongoc_cursor_error (cursor, error))
      n = -1;
   mongoc_cursor_destroy (cursor);
   return n;
}

/* The handshakes: legacy OP_QUERY isMaster, OP_MSG hello, a pooled client. */
static void
check_handshakes (mongoc_uri_t *uri, mongoc_client_t *client)
{
   bson_error_t error = {0};
   char detail[1024];

   report ("handshake_ping", ping (client, &error), error.message);

   mongoc_server_description_t *sd = mongoc_client_select_server (client, true, NULL, &error);
   if (!sd) {
      report ("server_description", false, error.message);
   } else {
      const bson_t *hello = mongoc_server_description_hello_response (sd);
      const char *type = mongoc_server_description_type (sd);
      int64_t wire = int_field (hello, "maxWireVersion");
      snprintf (detail, sizeof detail, "type %s, maxWireVersion %d", type, (int) wire);
      report ("server_description", !strcmp (type, "Standalone") && wire >= 13, detail);
      mongoc_server_description_destroy (sd);
   }

   /* asking for the stable API makes libmongoc handshake with hello over OP_MSG */
   mongoc_client_t *api_client = mongoc_client_new_from_uri (uri);
   mongoc_server_api_t *api = mongoc_server_api_new (MONGOC_SERVER_API_V1);
   bool ok = mongoc_client_set_server_api (api_client, api, &error) && ping (api_client, &error);
   report ("hello_op_msg", ok, error.message);
   mongoc_server_api_destroy (api);
   mongoc_client_destroy (api_client);

   /* a pooled client has a background monitoring thread and connection */
   mongoc_client_pool_t *pool = mongoc_client_pool_new (uri);
   mongoc_client_t *pooled = mongoc_client_pool_pop (pool);
   report ("pooled_client", ping (pooled, &error), error.message);
   mongoc_client_pool_push (pool, pooled);
   mongoc_client_pool_destroy (pool);
}

/* Index, insert, find and cursor checks on a fresh users collection. */
static void
check_reads (mongoc_database_t *db, mongoc_collection_t *users)
{
   bson_error_t error = {0};
   char detail[1024];
   bson_t reply;
   bool ok;

   bson_t *create = BCON_NEW ("createIndexes", "users", "indexes", "[", "{", "key", "{", "email",
                              BCON_INT32 (1), "}", "name", "email_1", "unique", BCON_BOOL (true), "}",
                              "]");
   ok = mongoc_database_write_command_with_opts (db, create, NULL, &reply, &error);
   report ("create_unique_index", ok && int_field (&reply, "numIndexesAfter") == 2, error.message);
   bson_destroy (&reply);
   ok = mongoc_database_write_command_with_opts (db, create, NULL, &reply, &error);
   report ("create_index_again", ok && int_field (&reply, "numIndexesAfter") == 2, error.message);
   bson_destroy (&reply);
   bson_destroy (create);

   /* users u0000..u0999, age i % 50, sent as one OP_MSG document sequence */
   bson_t *docs[1000];
   for (int i = 0; i < 1000; i++) {
      char id[16], email[64], name[32];
      snprintf (id, sizeof id, "u%04d", i);
      snprintf (email, sizeof email, "u%04d@example.com", i);
      snprintf (name, sizeof name, "User %d", i);
      docs[i] = BCON_NEW ("_id", id, "email", email, "name", name, "age", BCON_INT32 (i % 50),
                          "version", BCON_INT64 (1));
   }
   ok = mongoc_collection_insert_many (users, (const bson_t **) docs, 1000, NULL, &reply, &error);
   report ("insert_many", ok && int_field (&reply, "insertedCount") == 1000, error.message);
   bson_destroy (&reply);
   for (int i = 0; i < 1000; i++)
      bson_destroy (docs[i]);

   bson_t *dup = BCON_NEW ("_id", "dup", "email", "u0005@example.com");
   ok = mongoc_collection_insert_one (users, dup, NULL, NULL, &error);
   snprintf (detail, sizeof detail, "inserted=%d code=%u %.900s", ok, error.code, error.message);
   report ("insert_duplicate_email", !ok && error.code == 11000, detail);
   bson_destroy (dup);

   bson_t *filter = BCON_NEW ("_id", "{", "$in", "[", "u0003", "u0010", "u0042", "u0007", "]", "}");
   bson_t *opts = BCON_NEW ("sort", "{", "age", BCON_INT32 (-1), "}", "limit", BCON_INT64 (3),
                            "projection", "{", "email", BCON_INT32 (1), "}");
   mongoc_cursor_t *cursor = mongoc_collection_find_with_opts (users, filter, opts, NULL);
   const bson_t *doc;
   char got[1024] = "";
   ok = true;
   while (mongoc_cursor_next (cursor, &doc)) {
      strncat (got, str_field (doc, "_id"), sizeof got - strlen (got) - 2);
      strcat (got, " ");
      ok = ok && bson_has_field (doc, "email") && !bson_has_field (doc, "age");
   }
   if (mongoc_cursor_error (cursor, &error))
      snprintf (got, sizeof got, "%s", error.message);
   report ("find_in_sort_limit_projection", ok && !strcmp (got, "u0042 u0010 u0007 "), got);
   mongoc_cursor_destroy (cursor);
   bson_destroy (filter);
   bson_destroy (opts);

   bson_t empty = BSON_INITIALIZER;
   opts = BCON_NEW ("batchSize", BCON_INT32 (100));
   getmores = 0;
   int n = drain (mongoc_collection_find_with_opts (users, &empty, opts, NULL), &error);
   snprintf (detail, sizeof detail, "%d documents, %d getMores %.900s", n, getmores, error.message);
   report ("find_batches_getmore", n == 1000 && getmores >= 9, detail);
   bson_destroy (opts);

   opts = BCON_NEW ("batchSize", BCON_INT32 (10));
   kill_cursors = 0;
   cursor = mongoc_collection_find_with_opts (users, &empty, opts, NULL);
   ok = mongoc_cursor_next (cursor, &doc);
   mongoc_cursor_destroy (cursor);
   report ("kill_cursor", ok && kill_cursors == 1, "destroying an open cursor sent no killCursors");
   bson_destroy (opts);

   /* libmongoc 1.23 sends exhaust cursors as legacy OP_QUERY, answered by a stream of OP_REPLY */
   opts = BCON_NEW ("exhaust", BCON_BOOL (true), "batchSize", BCON_INT32 (300));
   n = drain (mongoc_collection_find_with_opts (users, &empty, opts, NULL), &error);
   snprintf (detail, sizeof detail, "%d documents %.900s", n, error.message);
   report ("exhaust_cursor", n == 1000, detail);
   bson_destroy (opts);
}

/* Update, findAndModify, delete and count checks (after check_reads). */
static void
check_writes (mongoc_collection_t *users)
{
   bson_error_t error = {0};
   char detail[1024], json[800];
   bson_t reply;
   bool ok;

   bson_t *query = BCON_NEW ("_id", "new-user");
   bson_t *update = BCON_NEW ("$set", "{", "email", "new@example.com", "}", "$setOnInsert", "{",
                              "created", BCON_BOOL (true), "}");
   bson_t *upsert = BCON_NEW ("upsert", BCON_BOOL (true));
   ok = mongoc_collection_update_one (users, query, update, upsert, &reply, &error);
   snprintf (detail, sizeof detail, "%s %.200s", as_json (&reply, json, sizeof json), error.message);
   ok = ok && int_field (&reply, "upsertedCount") == 1 &&
        !strcmp (str_field (&reply, "upsertedId"), "new-user");
   bson_destroy (&reply);
   ok = ok && mongoc_collection_update_one (users, query, update, upsert, &reply, &error) &&
        int_field (&reply, "matchedCount") == 1 && int_field (&reply, "modifiedCount") == 0 &&
        int_field (&reply, "upsertedCount") == 0;
   report ("update_upsert", ok, detail);
   bson_destroy (&reply);
   bson_destroy (query);
   bson_destroy (update);
   bson_destroy (upsert);

   query = BCON_NEW ("_id", "u0006");
   update = BCON_NEW ("$set", "{", "email", "u0007@example.com", "}");
   ok = mongoc_collection_update_one (users, query, update, NULL, NULL, &error);
   snprintf (detail, sizeof detail, "updated=%d code=%u %.900s", ok, error.code, error.message);
   report ("update_duplicate_email", !ok && error.code == 11000, detail);
   bson_destroy (query);
   bson_destroy (update);

   /* version guards: $max, and an update conditional on the stored version */
   query = BCON_NEW ("_id", "u0001");
   update = BCON_NEW ("$max", "{", "version", BCON_INT64 (5), "}");
   bson_t *lower = BCON_NEW ("$max", "{", "version", BCON_INT64 (3), "}");
   ok = mongoc_collection_update_one (users, query, update, NULL, &reply, &error) &&
        int_field (&reply, "modifiedCount") == 1;
   bson_destroy (&reply);
   ok = ok && mongoc_collection_update_one (users, query, lower, NULL, &reply, &error) &&
        int_field (&reply, "modifiedCount") == 0;
   bson_destroy (&reply);
   bson_t *stale = BCON_NEW ("_id", "u0001", "version", "{", "$lt", BCON_INT64 (5), "}");
   bson_t *bump = BCON_NEW ("$set", "{", "version", BCON_INT64 (9), "}");
   ok = ok && mongoc_collection_update_one (users, stale, bump, NULL, &reply, &error) &&
        int_field (&reply, "matchedCount") == 0;
   bson_destroy (&reply);
   report ("update_version_guards", ok, error.message);
   bson_destroy (query);
   bson_destroy (update);
   bson_destroy (lower);
   bson_destroy (stale);
   bson_destroy (bump);

   mongoc_write_concern_t *wc = mongoc_write_concern_new ();
   mongoc_write_concern_set_wmajority (wc, 1000);
   mongoc_write_concern_set_journal (wc, true);
   bson_t opts = BSON_INITIALIZER;
   mongoc_write_concern_append (wc, &opts);
   query = BCON_NEW ("age", BCON_INT32 (1));
   update = BCON_NEW ("$inc", "{", "logins", BCON_INT32 (1), "}");
   ok = mongoc_collection_update_many (users, query, update, &opts, &reply, &error);
   snprintf (detail, sizeof detail, "%s %.200s", as_json (&reply, json, sizeof json), error.message);
   report ("update_many_majority_journaled",
           ok && int_field (&reply, "matchedCount") == 20 && int_field (&reply, "modifiedCount") == 20,
           detail);
   bson_destroy (&reply);
   bson_destroy (query);
   bson_destroy (update);
   bson_destroy (&opts);
   mongoc_write_concern_destroy (wc);

   mongoc_find_and_modify_opts_t *fam = mongoc_find_and_modify_opts_new ();
   update = BCON_NEW ("$inc", "{", "logins", BCON_INT32 (1), "}");
   mongoc_find_and_modify_opts_set_update (fam, update);
   mongoc_find_and_modify_opts_set_flags (fam,
                                          MONGOC_FIND_AND_MODIFY_UPSERT | MONGOC_FIND_AND_MODIFY_RETURN_NEW);
   query = BCON_NEW ("_id", "fam-user");
   ok = mongoc_collection_find_and_modify_with_opts (users, query, fam, &reply, &error) &&
        int_field (&reply, "value.logins") == 1;
   bson_destroy (&reply);
   ok = ok && mongoc_collection_find_and_modify_with_opts (users, query, fam, &reply, &error) &&
        int_field (&reply, "value.logins") == 2 && int_field (&reply, "lastErrorObject.n") == 1;
   report ("find_and_modify_upsert", ok, error.message);
   bson_destroy (&reply);
   bson_destroy (query);
   bson_destroy (update);
   mongoc_find_and_modify_opts_destroy (fam);

   fam = mongoc_find_and_modify_opts_new ();
   bson_t *sort = BCON_NEW ("_id", BCON_INT32 (-1));
   mongoc_find_and_modify_opts_set_sort (fam, sort);
   mongoc_find_and_modify_opts_set_flags (fam, MONGOC_FIND_AND_MODIFY_REMOVE);
   query = BCON_NEW ("age", BCON_INT32 (2));
   ok = mongoc_collection_find_and_modify_with_opts (users, query, fam, &reply, &error);
   snprintf (detail, sizeof detail, "removed %.60s %.900s", str_field (&reply, "value._id"), error.message);
   report ("find_and_modify_remove", ok && !strcmp (str_field (&reply, "value._id"), "u0952"), detail);
   bson_destroy (&reply);
   bson_destroy (query);
   bson_destroy (sort);
   mongoc_find_and_modify_opts_destroy (fam);

   query = BCON_NEW ("_id", "u0000");
   ok = mongoc_collection_delete_one (users, query, NULL, &reply, &error) &&
        int_field (&reply, "deletedCount") == 1;
   bson_destroy (&reply);
   bson_destroy (query);
   query = BCON_NEW ("age", BCON_INT32 (3));
   ok = ok && mongoc_collection_delete_many (users, query, NULL, &reply, &error) &&
        int_field (&reply, "deletedCount") == 20;
   report ("delete_one_and_many", ok, error.message);
   bson_destroy (&reply);
   bson_destroy (query);

   query = BCON_NEW ("age", "{", "$gte", BCON_INT32 (40), "}");
   bson_t *count_opts = BCON_NEW ("skip", BCON_INT64 (5), "limit", BCON_INT64 (100));
   int64_t counted = mongoc_collection_count_documents (users, query, count_opts, NULL, NULL, &error);
   int64_t all = mongoc_collection_count_documents (users, query, NULL, NULL, NULL, &error);
   snprintf (detail, sizeof detail, "%d with skip/limit, %d without %.900s", (int) counted, (int) all,
             error.message);
   report ("count_documents", counted == 100 && all == 200, detail);
   bson_destroy (query);
   bson_destroy (count_opts);
   /* 1000 + new-user + fam-user - u0952 - u0000 - the 20 of age 3 */
   int64_t estimated = mongoc_collection_estimated_document_count (users, NULL, NULL, NULL, &error);
   snprintf (detail, sizeof detail, "%d %.900s", (int) estimated, error.message);
   report ("estimated_document_count", estimated == 980, detail);
}

/* listIndexes, an unknown command, drop. */
static void
check_admin (mongoc_database_t *db, mongoc_collection_t *users)
{
   bson_error_t error = {0};
   char names[1024] = "";
   const bson_t *doc;

   mongoc_cursor_t *cursor = mongoc_collection_find_indexes_with_opts (users, NULL);
   while (mongoc_cursor_next (cursor, &doc)) {
      strncat (names, str_field (doc, "name"), sizeof names - strlen (names) - 2);
      strcat (names, " ");
   }
   if (mongoc_cursor_error (cursor, &error))
      snprintf (names, sizeof names, "%s", error.message);
   report ("list_indexes", !strcmp (names, "_id_ email_1 "), names);
   mongoc_cursor_destroy (cursor);

   bson_t *cmd = BCON_NEW ("noSuchCommand", BCON_INT32 (1));
   bool ok = mongoc_database_command_simple (db, cmd, NULL, NULL, &error);
   report ("unknown_command", !ok && error.code == 59, error.message);
   bson_destroy (cmd);

   ok = mongoc_collection_drop (users, &error);
   bool again = mongoc_collection_drop (users, &error);
   report ("drop", ok && !again && error.code == 26, error.message);
}

/* 50,000 users written in batches of 1,000 and read back in batches of 1,000. */
static void
check_throughput (mongoc_collection_t *coll)
{
   bson_error_t error = {0};
   char detail[1024];
   bson_t *docs[1000];
   bool ok = true;
   int64_t started = bson_get_monotonic_time ();

   for (int batch = 0; ok && batch < 50; batch++) {
      for (int i = 0; i < 1000; i++) {
         int n = batch * 1000 + i;
         char id[32], email[64], name[32];
         snprintf (id, sizeof id, "user-%06d", n);
         snprintf (email, sizeof email, "user%d@example.com", n);
         snprintf (name, sizeof name, "User %d", n);
         docs[i] = BCON_NEW ("_id", id, "email", email, "name", name,
                             "created", BCON_DATE_TIME (1577836800000), "version", BCON_INT64 (1));
      }
      ok = mongoc_collection_insert_many (coll, (const bson_t **) docs, 1000, NULL, NULL, &error);
      for (int i = 0; i < 1000; i++)
         bson_destroy (docs[i]);
   }
   int64_t written = bson_get_monotonic_time ();
   bson_t empty = BSON_INITIALIZER;
   bson_t *opts = BCON_NEW ("batchSize", BCON_INT32 (1000));
   int n = ok ? drain (mongoc_collection_find_with_opts (coll, &empty, opts, NULL), &error) : -1;
   int64_t done = bson_get_monotonic_time ();
   bson_destroy (opts);
   printf ("# libmongoc: 50000 users inserted in %.2f s, read back in %.2f s\n",
           (written - started) / 1e6, (done - written) / 1e6);
   snprintf (detail, sizeof detail, "%d read in %.1f s %.900s", n, (done - started) / 1e6, error.message);
   report ("throughput_50k", n == 50000 && done - started < 20 * 1000000, detail);
   mongoc_collection_drop (coll, NULL);
}

int
main (int argc, char **argv)
{
   bson_error_t error;

   if (argc != 3) {
      fprintf (stderr, "usage: %s URI DBNAME\n", argv[0]);
      return 2;
   }
   mongoc_init ();
   mongoc_uri_t *uri = mongoc_uri_new_with_error (argv[1], &error);
   if (!uri) {
      fprintf (stderr, "bad URI: %s\n", error.message);
      return 2;
   }
   mongoc_client_t *client = mongoc_client_new_from_uri (uri);
   mongoc_apm_callbacks_t *callbacks = mongoc_apm_callbacks_new ();
   mongoc_apm_set_command_started_cb (callbacks, on_started);
   mongoc_client_set_apm_callbacks (client, callbacks, NULL);
   mongoc_database_t *db = mongoc_client_get_database (client, argv[2]);
   mongoc_collection_t *users = mongoc_client_get_collection (client, argv[2], "users");
   mongoc_collection_t *bulk = mongoc_client_get_collection (client, argv[2], "bulk_users");

   check_handshakes (uri, client);
   check_reads (db, users);
   check_writes (users);
   check_admin (db, users);
   check_throughput (bulk);

   mongoc_collection_destroy (bulk);
   mongoc_collection_destroy (users);
   mongoc_database_destroy (db);
   mongoc_client_destroy (client);
   mongoc_apm_callbacks_destroy (callbacks);
   mongoc_uri_destroy (uri);
   mongoc_cleanup ();
   return 0;
}
"""


@check("libmongoc check program compiles (gcc, pkg-config libmongoc-1.0) and runs")
def _run_c_program():
    """Build the C client above against libmongoc 1.23 and run it."""
    for tool in ("gcc", "pkg-config"):
        assert shutil.which(tool), "%s is not installed" % tool
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libmongoc-1.0"],
                           capture_output=True, text=True)
    assert flags.returncode == 0, "pkg-config libmongoc-1.0: %s" % flags.stderr.strip()
    version = subprocess.run(["pkg-config", "--modversion", "libmongoc-1.0"], capture_output=True, text=True)
    print("# libmongoc %s" % version.stdout.strip())
    source = os.path.join(CTX.workdir, "check.c")
    program = os.path.join(CTX.workdir, "check")
    with open(source, "w") as out:
        out.write(C_SOURCE)
    build = subprocess.run(["gcc", "-Wall", "-o", program, source] + flags.stdout.split(),
                           capture_output=True, text=True)
    assert build.returncode == 0, "gcc failed:\n" + build.stderr
    run = subprocess.run([program, CTX.uri, DB_NAME + "_c"], capture_output=True, text=True, timeout=300)
    CTX.c_output = run.stdout + run.stderr
    for line in run.stdout.splitlines():
        if line.startswith("ok "):
            CTX.c_results[line[3:]] = None
        elif line.startswith("not ok "):
            name, _, detail = line[7:].partition(": ")
            CTX.c_results[name] = detail or "failed"
        elif line.startswith("# "):
            print(line)
    assert run.returncode == 0, "exit status %d:\n%s" % (run.returncode, CTX.c_output[-3000:])


def _c_point(name):
    """A test point reporting one line of the C program's output."""
    def point():
        """Fail unless the C program printed "ok NAME"."""
        assert name in CTX.c_results, "the C program printed nothing for it:\n" + CTX.c_output[-2000:]
        assert CTX.c_results[name] is None, CTX.c_results[name]
    return point


for _name in C_CHECKS:
    CHECKS.append(("libmongoc: " + _name, _c_point(_name), False))


@check("the double saw libmongoc's isMaster over OP_QUERY and hello over OP_MSG", double_only=True)
def _handshake_log():
    """Its stderr names each connection's first handshake and opcode."""
    log = CTX.double_log()
    assert "isMaster via OP_QUERY from mongoc 1.23" in log, log[-2000:]
    assert "hello via OP_MSG from mongoc 1.23" in log, log[-2000:]


@check("a second double on --host 127.0.0.1 serves, then exits 0 on SIGINT", double_only=True)
def _sigint():
    """--host and SIGINT."""
    process, port, _ = CTX.start_double("--host", "127.0.0.1")
    try:
        client = pymongo.MongoClient("mongodb://127.0.0.1:%d/" % port, serverSelectionTimeoutMS=5000)
        assert client.admin.command("ping")["ok"] == 1
        client.close()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0, "exit status %r" % process.returncode
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@check("the double exits 0 on SIGTERM", double_only=True)
def _sigterm():
    """The last point: stop the double under test."""
    CTX.client.close()
    CTX.process.send_signal(signal.SIGTERM)
    assert CTX.process.wait(timeout=15) == 0, "exit status %r" % CTX.process.returncode
    CTX.client = None


def main():
    """Run every test point; exit 1 if any failed."""
    print("1..%d" % len(CHECKS), flush=True)
    failed = 0
    try:
        CTX.open()
    except Exception as error:
        print("Bail out! %s" % error, flush=True)
        CTX.close()
        return 1
    try:
        for number, (description, function, double_only) in enumerate(CHECKS, 1):
            if double_only and REAL_URI:
                print("ok %d - %s # SKIP CUTOVER_TEST_MONGO_URI is set: not the double"
                      % (number, description))
                continue
            try:
                function()
                print("ok %d - %s" % (number, description))
            except Exception:
                failed += 1
                print("not ok %d - %s" % (number, description))
                for line in traceback.format_exc().rstrip().splitlines():
                    print("#   " + line)
            sys.stdout.flush()
        if failed and CTX.stderr_path:
            print("# the double's stderr ends with:")
            for line in CTX.double_log().splitlines()[-30:]:
                print("#   " + line)
    finally:
        CTX.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
