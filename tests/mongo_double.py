#!/usr/bin/python3
"""
mongo_double.py - a MongoDB wire-protocol double for cutover's tests.

No mongod can be installed on the project's machines, so the tests of
`cutover-migrate` (which reads the legacy `users` collection with libmongoc
and sometimes upserts into the service's database) talk to this process
instead. It is built on Debian's python3-mockupdb (MongoDB Inc.'s
wire-protocol server library) with python3-pymongo 3.11's bson for BSON:

    /usr/bin/python3 tests/mongo_double.py --port 0 [--host 127.0.0.1] [--verbose]

It prints "port N" and then "ready" on stdout once listening, serves until
SIGTERM or SIGINT, then exits 0. On stderr it logs each connection's first
handshake ("connection 3: isMaster via OP_QUERY from mongoc 1.23.1") and,
with --verbose, every command. Every integration test can point at a real
mongod instead by setting CUTOVER_TEST_MONGO_URI (tests/mongo_double_check.py
shows how); this file only has to behave like one for what the project sends.

What it implements, with MongoDB 5.0's semantics (maxWireVersion 13) on an
in-memory store (databases -> collections -> documents kept in natural,
i.e. insertion, order and indexed by _id):
  - OP_MSG commands, including kind-1 document sequences and moreToCome
    (w:0) writes (a checksum is accepted, not verified); commands over
    legacy OP_QUERY on "db.$cmd", which is how libmongoc and pymongo send
    their first isMaster; legacy OP_QUERY finds and OP_GET_MORE, which is
    how libmongoc 1.23 and pymongo 3.11 still send exhaust cursors to a 5.0
    server (the double streams the batches as mongod does).
  - hello, isMaster/ismaster, ping, buildInfo (5.0.0), endSessions.
  - insert (ObjectId _id when missing; E11000 duplicate key write errors,
    ordered or not), find (filter, projection, sort, skip, limit, batchSize,
    singleBatch), getMore, killCursors, update (update operators $set,
    $unset, $inc, $min, $max, $setOnInsert, or a replacement; upsert;
    multi), delete (limit 0/1), findAndModify, count, aggregate ($match,
    $group with $sum, $skip, $limit: enough for count_documents),
    createIndexes (unique and sparse indexes enforced with E11000),
    listIndexes, drop, dropDatabase, listCollections.
  - Query operators on any dotted path, with implicit array matching:
    equality, $eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $exists, $and,
    $or, $nor; comparisons follow BSON type order (ints, longs, doubles and
    decimals compare as numbers).
  - writeConcern, readConcern, lsid, $readPreference and other generic
    fields are accepted and ignored: a standalone server acknowledges
    {w: "majority", j: true} the moment the write is done.

What it does not implement:
  - Any other command answers {ok: 0, code: 59, codeName: "CommandNotFound",
    errmsg: "no such command: '...'"}, as mongod does.
  - Real MongoDB features outside that list (e.g. $regex, $elemMatch, $push,
    $sort stages, collations, text/TTL/partial indexes, transactions)
    answer code 238 NotImplemented naming the feature, so a test never gets
    a silently wrong answer; operators MongoDB itself does not know answer
    code 2 BadValue ("unknown operator: $foo") like mongod.
  - No authentication, TLS, compression (a client that offers compressors
    in its handshake is told none, so it never compresses), replica sets,
    sessions beyond accepting lsid, retryable writes (the double is a
    standalone, where drivers do not retry), or the streaming (awaitable
    hello) monitoring protocol (no topologyVersion, so drivers poll).
  - The legacy write opcodes and OP_KILL_CURSORS, which drivers never send
    to a 5.0 server and which have no reply, are logged and dropped
    (mockupdb also misreads OP_KILL_CURSORS' 64-bit cursor ids).
  - Cursors never time out; BSON dates outside years 1-9999 cannot be
    decoded by pymongo 3.11 and make the double drop that connection.

Requests are served on mockupdb's per-connection threads, which mockupdb
runs one at a time under its own lock; the store has a lock of its own all
the same, so each command is atomic whatever mockupdb does. An exhaust
stream is sent from a thread of its own so that it never holds up the other
connections.
"""
import argparse
import datetime
import itertools
import math
import operator
import random
import re
import signal
import struct
import sys
import threading
import traceback

import bson
import mockupdb
from bson.binary import UuidRepresentation
from bson.code import Code
from bson.codec_options import CodecOptions
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

MAX_BSON_OBJECT_SIZE = 16 * 1024 * 1024
MAX_MESSAGE_SIZE_BYTES = 48000000
MAX_WRITE_BATCH_SIZE = 100000
MIN_WIRE_VERSION = 0
MAX_WIRE_VERSION = 13           # MongoDB 5.0
SERVER_VERSION = "5.0.0"
DEFAULT_FIRST_BATCH = 101       # mongod's default first batch size

# Decode requests as plain dicts and keep every binary subtype as it came
# (mockupdb's default would turn UUID subtype 4 into subtype 3 on the way
# back out). mockupdb reads this module-level setting on each request.
mockupdb.CODEC_OPTIONS = CodecOptions(
    document_class=dict, uuid_representation=UuidRepresentation.UNSPECIFIED)

CODE_NAMES = {
    1: "InternalError", 2: "BadValue", 9: "FailedToParse", 13: "Unauthorized",
    14: "TypeMismatch", 26: "NamespaceNotFound", 28: "PathNotViable",
    40: "ConflictingUpdateOperators", 43: "CursorNotFound",
    59: "CommandNotFound", 66: "ImmutableField", 73: "InvalidNamespace",
    85: "IndexOptionsConflict", 86: "IndexKeySpecsConflict",
    238: "NotImplemented", 11000: "DuplicateKey",
}

# Real MongoDB names this double does not implement (answered with code
# 238, not with the "unknown" errors mongod gives for made-up names).
KNOWN_QUERY_OPERATORS = {
    "$regex", "$options", "$not", "$all", "$elemMatch", "$size", "$type",
    "$mod", "$text", "$where", "$expr", "$jsonSchema", "$geoWithin",
    "$geoIntersects", "$near", "$nearSphere", "$bitsAllSet", "$bitsAnySet",
    "$bitsAllClear", "$bitsAnyClear", "$sampleRate",
}
KNOWN_UPDATE_OPERATORS = {
    "$push", "$pull", "$pullAll", "$addToSet", "$pop", "$rename",
    "$currentDate", "$mul", "$bit",
}
KNOWN_STAGES = {
    "$sort", "$project", "$unwind", "$lookup", "$addFields", "$set",
    "$unset", "$count", "$facet", "$out", "$merge", "$sample",
    "$replaceRoot", "$replaceWith", "$collStats", "$indexStats",
    "$sortByCount", "$bucket", "$bucketAuto", "$graphLookup",
    "$unionWith", "$redact", "$geoNear", "$densify", "$fill",
    "$setWindowFields", "$documents", "$currentOp", "$listSessions",
}
KNOWN_ACCUMULATORS = {
    "$avg", "$min", "$max", "$first", "$last", "$push", "$addToSet",
    "$count", "$stdDevPop", "$stdDevSamp", "$mergeObjects",
}


class CommandError(Exception):
    """A MongoDB error reply: code, codeName and errmsg (plus extra fields)."""

    def __init__(self, code, errmsg, **extra):
        """Record the error code, its message and any extra reply fields."""
        super().__init__(errmsg)
        self.code = code
        self.errmsg = errmsg
        self.extra = extra

    def reply(self):
        """The command reply document for this error."""
        doc = {"ok": 0.0, "errmsg": self.errmsg, "code": self.code,
               "codeName": CODE_NAMES.get(self.code, "Location%d" % self.code)}
        doc.update(self.extra)
        return doc

    def write_error(self, index):
        """This error as one entry of a write command's writeErrors."""
        doc = {"index": index, "code": self.code}
        doc.update(self.extra)
        doc["errmsg"] = self.errmsg
        return doc


def not_implemented(what):
    """The error for a real MongoDB feature this double leaves out."""
    return CommandError(238, "%s is not implemented by mongo_double" % what)


# ---------------------------------------------------------------- BSON order

MISSING = object()      # what a path lookup finds where a field is absent


def sort_key(value):
    """A hashable key that orders and equates values as MongoDB does.

    The first element is the canonical BSON type rank (MinKey < null <
    numbers < strings < objects < arrays < binary < ObjectId < booleans <
    dates < timestamps < regexes < code < MaxKey); ints, longs, doubles and
    decimals share a rank and compare by value, so 1, 1.0 and NumberLong(1)
    are equal keys, while true and 1 are not. NaN sorts below every number.
    """
    kind = type(value)
    if kind is str:
        return (15, value)
    if kind is int or kind is Int64:
        return (10, value, 1)
    if kind is float:
        return (10, -math.inf, 0) if value != value else (10, value, 1)
    if kind is ObjectId:
        return (35, value.binary)
    if kind is bool:
        return (40, value)
    if kind is datetime.datetime:
        return (45, value)
    if value is None:
        return (5,)
    if isinstance(value, dict):
        items = []
        for name, item in value.items():
            key = sort_key(item)
            items.append((key[0], name, key))
        return (20, tuple(items))
    if isinstance(value, list):
        return (25, tuple(sort_key(item) for item in value))
    if isinstance(value, DBRef):
        return sort_key(value.as_doc())
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        return (10, -math.inf, 0) if number.is_nan() else (10, number, 1)
    if isinstance(value, Code):
        return (60, str(value))
    if isinstance(value, bytes):
        return (30, len(value), getattr(value, "subtype", 0), bytes(value))
    if isinstance(value, Timestamp):
        return (47, value.time, value.inc)
    if isinstance(value, Regex):
        return (50, value.pattern, value.flags)
    if isinstance(value, MinKey):
        return (-1,)
    if isinstance(value, MaxKey):
        return (127,)
    raise CommandError(2, "cannot compare a value of type %s"
                       % type(value).__name__)


def is_number(value):
    """True for BSON numbers (int32, int64, double, decimal), not booleans."""
    return (isinstance(value, (int, float, Decimal128))
            and not isinstance(value, bool))


def add_numbers(left, right):
    """left + right with MongoDB's result type (int32 widens to int64)."""
    if isinstance(left, Decimal128) or isinstance(right, Decimal128):
        return Decimal128(_to_decimal(left) + _to_decimal(right))
    if isinstance(left, float) or isinstance(right, float):
        return float(left) + float(right)
    total = int(left) + int(right)
    if (isinstance(left, Int64) or isinstance(right, Int64)
            or not -2 ** 31 <= total < 2 ** 31):
        return Int64(total)
    return total


def _to_decimal(value):
    """A number as a decimal.Decimal, for decimal128 arithmetic."""
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return Decimal128(str(value)).to_decimal()


def shell_repr(value):
    """A value printed roughly as mongod prints it in error messages."""
    if isinstance(value, str):
        return '"%s"' % value
    if isinstance(value, ObjectId):
        return "ObjectId('%s')" % value
    if isinstance(value, dict):
        return "{ %s }" % ", ".join("%s: %s" % (name, shell_repr(item))
                                    for name, item in value.items())
    if isinstance(value, list):
        return "[ %s ]" % ", ".join(shell_repr(item) for item in value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------- paths

def lookup(value, parts, start=0):
    """Every value at the dotted path parts[start:] under value.

    Like MongoDB, a path goes into the documents inside an array ("a.b" finds
    b in each element of a) and a numeric part also indexes the array. Where
    the path ends at an absent field the list holds MISSING, and it is never
    empty.
    """
    if start == len(parts):
        return [value]
    part = parts[start]
    if isinstance(value, dict):
        if part in value:
            return lookup(value[part], parts, start + 1)
        return [MISSING]
    if isinstance(value, list):
        found = []
        if part.isdigit() and int(part) < len(value):
            found.extend(lookup(value[int(part)], parts, start + 1))
        for item in value:
            if isinstance(item, dict):
                found.extend(lookup(item, parts, start))
        return found or [MISSING]
    return [MISSING]


def get_path(doc, parts):
    """The single value at a dotted path (no array traversal) or MISSING."""
    value = doc
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def set_path(doc, parts, value):
    """Set a dotted path in doc, creating subdocuments as $set does."""
    target = doc
    for depth, part in enumerate(parts[:-1]):
        if isinstance(target, list):
            index = _array_index(target, part, parts[depth - 1])
            if target[index] is None:
                target[index] = {}
            child = target[index]
        else:
            child = target.setdefault(part, {})
        if not isinstance(child, (dict, list)):
            raise CommandError(28, "Cannot create field '%s' in element {%s: %s}"
                               % (parts[depth + 1], part, shell_repr(child)))
        target = child
    last = parts[-1]
    if isinstance(target, list):
        target[_array_index(target, last, parts[-2])] = value
    else:
        target[last] = value


def _array_index(array, part, name):
    """The index a path part names in an array, padding it with nulls."""
    if not part.isdigit():
        raise CommandError(28, "Cannot create field '%s' in element {%s: %s}"
                           % (part, name, shell_repr(array)))
    index = int(part)
    array.extend([None] * (index + 1 - len(array)))
    return index


def unset_path(doc, parts):
    """Remove a dotted path from doc ($unset: an array element becomes null)."""
    parent = get_path(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent.pop(last, None)
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        parent[int(last)] = None


def copy_value(value):
    """A deep copy of a BSON value (only documents and arrays are mutable)."""
    if isinstance(value, dict):
        return {name: copy_value(item) for name, item in value.items()}
    if isinstance(value, list):
        return [copy_value(item) for item in value]
    return value


def with_id_first(doc):
    """doc with an _id (a new ObjectId if it has none) as its first field."""
    if doc and next(iter(doc)) == "_id":
        return doc
    out = {"_id": doc["_id"] if "_id" in doc else ObjectId()}
    out.update((name, value) for name, value in doc.items() if name != "_id")
    return out


# ------------------------------------------------------------------- filters

def is_operator_doc(value):
    """True for {$op: ...} condition documents (first field starts with $)."""
    return isinstance(value, dict) and bool(value) and next(iter(value)).startswith("$")


def compile_filter(spec):
    """A predicate doc -> bool for a MongoDB query filter document."""
    if not isinstance(spec, dict):
        raise CommandError(14, "filter must be an object")
    tests = []
    for name, condition in spec.items():
        if name.startswith("$"):
            tests.append(_compile_logical(name, condition))
        else:
            tests.append(_compile_field(name, condition))
    if len(tests) == 1:
        return tests[0]
    return lambda doc: all(test(doc) for test in tests)


def _compile_logical(name, clauses):
    """A predicate for a top-level $and, $or, $nor (or an ignored $comment)."""
    if name == "$comment":
        return lambda doc: True
    if name not in ("$and", "$or", "$nor"):
        if name in KNOWN_QUERY_OPERATORS:
            raise not_implemented("query operator " + name)
        raise CommandError(2, "unknown top level operator: " + name)
    if not isinstance(clauses, list) or not clauses:
        raise CommandError(2, "$and/$or/$nor must be a nonempty array")
    if not all(isinstance(clause, dict) for clause in clauses):
        raise CommandError(2, "$or/$and/$nor entries need to be full objects")
    tests = [compile_filter(clause) for clause in clauses]
    if name == "$and":
        return lambda doc: all(test(doc) for test in tests)
    if name == "$or":
        return lambda doc: any(test(doc) for test in tests)
    return lambda doc: not any(test(doc) for test in tests)


def _compile_field(path, condition):
    """A predicate for one field's condition: a value or {$op: arg, ...}."""
    parts = path.split(".")
    if is_operator_doc(condition):
        tests = [_compile_operator(op, arg) for op, arg in condition.items()]
    else:
        tests = [_equality_test(condition)]
    if len(tests) == 1:
        test = tests[0]
        return lambda doc: test(lookup(doc, parts))

    def matches(doc):
        """True when every operator of the condition holds."""
        values = lookup(doc, parts)
        return all(test(values) for test in tests)
    return matches


def _candidates(values):
    """The values at a path plus the elements of those that are arrays."""
    for value in values:
        if value is MISSING:
            continue
        yield value
        if isinstance(value, list):
            yield from value


def _is_null_like(values):
    """True when a path is absent or holds null (what {field: null} matches)."""
    return any(value is MISSING or value is None
               or (isinstance(value, list) and None in value)
               for value in values)


def _equality_test(target):
    """A test of path values for equality with target, MongoDB-style."""
    if isinstance(target, (Regex, re.Pattern)):
        raise not_implemented("regular expression matching")
    if target is None:
        return _is_null_like
    key = sort_key(target)
    return lambda values: any(sort_key(value) == key for value in _candidates(values))


def _in_test(targets, name):
    """A test of path values for membership in the $in array targets."""
    if not isinstance(targets, list):
        raise CommandError(2, "%s needs an array" % name)
    for target in targets:
        if isinstance(target, (Regex, re.Pattern)):
            raise not_implemented("regular expression matching")
        if is_operator_doc(target):
            raise CommandError(2, "cannot nest $ under %s" % name)
    keys = {sort_key(target) for target in targets}
    with_null = None in targets

    def test(values):
        """True when some value at the path is one of the targets."""
        if with_null and _is_null_like(values):
            return True
        return any(sort_key(value) in keys for value in _candidates(values))
    return test


COMPARISONS = {"$gt": operator.gt, "$gte": operator.ge,
               "$lt": operator.lt, "$lte": operator.le}


def _comparison_test(name, target):
    """A test for $gt/$gte/$lt/$lte: only values of target's BSON type match."""
    if target is None:
        return _is_null_like if name in ("$gte", "$lte") else (lambda values: False)
    compare = COMPARISONS[name]
    target_key = sort_key(target)
    any_type = isinstance(target, (MinKey, MaxKey))

    def test(values):
        """True when some value at the path compares as asked."""
        for value in _candidates(values):
            key = sort_key(value)
            if (any_type or key[0] == target_key[0]) and compare(key, target_key):
                return True
        return False
    return test


def _compile_operator(name, arg):
    """A test of path values for one query operator."""
    if name == "$eq":
        return _equality_test(arg)
    if name == "$ne":
        test = _compile_operator("$eq", arg)
        return lambda values: not test(values)
    if name in COMPARISONS:
        return _comparison_test(name, arg)
    if name == "$in":
        return _in_test(arg, name)
    if name == "$nin":
        test = _in_test(arg, name)
        return lambda values: not test(values)
    if name == "$exists":
        wanted = bool(arg)
        return lambda values: any(value is not MISSING for value in values) == wanted
    if name in KNOWN_QUERY_OPERATORS:
        raise not_implemented("query operator " + name)
    raise CommandError(2, "unknown operator: " + name)


def id_keys(spec):
    """The _id keys a filter pins down ({_id: v}, $eq or $in), else None.

    Lets find, update and delete by _id use the _id index instead of a scan.
    """
    if not isinstance(spec, dict) or "_id" not in spec:
        return None
    condition = spec["_id"]
    if is_operator_doc(condition):
        if len(condition) != 1:
            return None
        name, arg = next(iter(condition.items()))
        if name == "$eq":
            values = [arg]
        elif name == "$in" and isinstance(arg, list):
            values = arg
        else:
            return None
    else:
        values = [condition]
    if any(isinstance(value, (list, Regex, re.Pattern)) or is_operator_doc(value)
           for value in values):
        return None
    return {sort_key(value) for value in values}


# ----------------------------------------------------- projection and sorting

def compile_projection(spec):
    """A function doc -> projected doc for a find projection, or None.

    Inclusion or exclusion of (dotted) fields; _id is included unless
    excluded; mixing inclusion and exclusion is an error, as in mongod.
    """
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise CommandError(14, "projection must be an object")
    include_id = True
    inclusion = None
    tree = {}
    for path, flag in spec.items():
        if not (is_number(flag) or isinstance(flag, bool)):
            raise not_implemented("projection of '%s' by an operator or expression" % path)
        if path == "_id":
            include_id = bool(flag)
            continue
        if inclusion is None:
            inclusion = bool(flag)
        elif inclusion != bool(flag):
            if inclusion:
                raise CommandError(31254, "Cannot do exclusion on field %s in inclusion projection" % path)
            raise CommandError(31253, "Cannot do inclusion on field %s in exclusion projection" % path)
        _add_projection_path(tree, path)
    if inclusion is None:
        inclusion = include_id
    if inclusion == include_id:
        tree["_id"] = True
    if inclusion:
        return lambda doc: _project_include(doc, tree)
    return lambda doc: _project_exclude(doc, tree)


def _add_projection_path(tree, path):
    """Add a dotted path to a projection tree (leaves are True)."""
    node = tree
    parts = path.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        child = node.get(part)
        if child is True or (last and child is not None):
            raise CommandError(31250, "Path collision at %s" % path)
        if last:
            node[part] = True
        else:
            node = node.setdefault(part, {})


def _project_include(doc, tree):
    """The fields of doc named in tree, in doc's own order."""
    out = {}
    for name, value in doc.items():
        sub = tree.get(name)
        if sub is True:
            out[name] = value
        elif sub is not None:
            if isinstance(value, dict):
                out[name] = _project_include(value, sub)
            elif isinstance(value, list):
                out[name] = [_project_include(item, sub) for item in value
                             if isinstance(item, dict)]
    return out


def _project_exclude(doc, tree):
    """doc without the fields named in tree."""
    out = {}
    for name, value in doc.items():
        sub = tree.get(name)
        if sub is None:
            out[name] = value
        elif sub is not True:
            if isinstance(value, dict):
                out[name] = _project_exclude(value, sub)
            elif isinstance(value, list):
                out[name] = [_project_exclude(item, sub) if isinstance(item, dict)
                             else item for item in value]
            else:
                out[name] = value
    return out


def sort_documents(docs, spec):
    """docs sorted by a {field: 1|-1, ...} spec, stable on natural order.

    An array sorts by its smallest element ascending and its largest
    descending, an empty array before null, and a missing field as null.
    """
    if not isinstance(spec, dict):
        raise CommandError(14, "sort must be an object")
    keys = []
    for path, direction in spec.items():
        if isinstance(direction, dict):
            raise not_implemented("sorting by $meta")
        if not is_number(direction) or direction not in (1, -1):
            raise CommandError(15975, "$sort key ordering must be 1 (for ascending) or -1 (for descending)")
        keys.append((path.split("."), direction < 0))
    docs = list(docs)
    for parts, descending in reversed(keys):
        docs.sort(key=lambda doc: _sort_value(doc, parts, descending),
                  reverse=descending)
    return docs


def _sort_value(doc, parts, descending):
    """The sort key of one document for one sort field."""
    keys = []
    for value in lookup(doc, parts):
        if value is MISSING:
            keys.append((5,))
        elif isinstance(value, list):
            keys.extend(sort_key(item) for item in value)
            if not value:
                keys.append((4,))
        else:
            keys.append(sort_key(value))
    return max(keys) if descending else min(keys)


# ------------------------------------------------------------------- updates

UPDATE_OPERATORS = ("$set", "$unset", "$inc", "$min", "$max", "$setOnInsert")


def parse_update(update):
    """Check an update: None for a replacement, else [(op, parts, arg)]."""
    if isinstance(update, list):
        raise not_implemented("pipeline-style update")
    if not isinstance(update, dict):
        raise CommandError(9, "update must be an object")
    if not is_operator_doc(update):
        return None
    ops = []
    paths = []
    for name, fields in update.items():
        if name not in UPDATE_OPERATORS:
            if name in KNOWN_UPDATE_OPERATORS:
                raise not_implemented("update operator " + name)
            raise CommandError(9, "Unknown modifier: %s. Expected a valid update modifier or "
                                  "pipeline-style update specified as an array" % name)
        if not isinstance(fields, dict):
            raise CommandError(9, "Modifiers operate on fields but we found type %s instead. "
                                  "For example: {$mod: {<field>: ...}} not {%s: %s}"
                               % (type(fields).__name__, name, shell_repr(fields)))
        for path, arg in fields.items():
            if name == "$inc" and not is_number(arg):
                raise CommandError(14, "Cannot increment with non-numeric argument: {%s: %s}"
                                   % (path, shell_repr(arg)))
            for other in paths:
                shorter, longer = sorted((path, other), key=len)
                if longer == shorter or longer.startswith(shorter + "."):
                    raise CommandError(40, "Updating the path '%s' would create a conflict at '%s'"
                                       % (path, shorter))
            paths.append(path)
            ops.append((name, path.split("."), arg))
    return ops


def apply_update(doc, ops, inserting):
    """A new document: doc changed by parsed update operators.

    $setOnInsert applies only when inserting (an upsert that matched
    nothing); $max/$min set the field when it is absent or the new value is
    greater/smaller in BSON order, which makes them version guards.
    """
    new = copy_value(doc)
    for name, parts, arg in ops:
        if name in ("$set", "$setOnInsert"):
            if name == "$set" or inserting:
                set_path(new, parts, copy_value(arg))
        elif name == "$unset":
            unset_path(new, parts)
        elif name == "$inc":
            current = get_path(new, parts)
            if current is MISSING:
                set_path(new, parts, arg)
            elif not is_number(current):
                raise CommandError(14, "Cannot apply $inc to a value of non-numeric type. "
                                       "{_id: %s} has the field '%s' of non-numeric type %s"
                                   % (shell_repr(new.get("_id")), parts[-1], type(current).__name__))
            else:
                set_path(new, parts, add_numbers(current, arg))
        else:
            current = get_path(new, parts)
            better = operator.gt if name == "$max" else operator.lt
            if current is MISSING or better(sort_key(arg), sort_key(current)):
                set_path(new, parts, copy_value(arg))
    return new


def updated_document(old, update, ops):
    """old after an update (ops from parse_update, None for a replacement)."""
    if ops is None:
        return replace_document(old, update)
    new = apply_update(old, ops, False)
    if "_id" not in new or sort_key(new["_id"]) != sort_key(old["_id"]):
        raise CommandError(66, "Performing an update on the path '_id' would modify the "
                               "immutable field '_id'")
    return new


def replace_document(old, replacement):
    """The replacement document, keeping old's _id (which must not change)."""
    new = {"_id": old["_id"]}
    for name, value in replacement.items():
        if name == "_id":
            if sort_key(value) != sort_key(old["_id"]):
                raise CommandError(66, "After applying the update, the (immutable) field '_id' was "
                                       "found to have been altered to _id: %s" % shell_repr(value))
        else:
            new[name] = copy_value(value)
    return new


def upsert_document(query, update, ops):
    """The document an upsert inserts: the query's equality fields + update."""
    seed = {}
    for path, value in _equality_fields(query):
        set_path(seed, path.split("."), copy_value(value))
    if ops is None:
        doc = {name: copy_value(value) for name, value in update.items()}
        if "_id" not in doc and "_id" in seed:
            doc["_id"] = seed["_id"]
    else:
        doc = apply_update(seed, ops, inserting=True)
    return with_id_first(doc)


def _equality_fields(query):
    """(path, value) for each equality condition of a query, through $and."""
    for name, condition in query.items():
        if name == "$and" and isinstance(condition, list):
            for clause in condition:
                yield from _equality_fields(clause)
        elif name.startswith("$"):
            continue
        elif is_operator_doc(condition):
            if "$eq" in condition:
                yield name, condition["$eq"]
        else:
            yield name, condition


# --------------------------------------------------------------------- store

class Index:
    """A secondary index: its listIndexes spec and, if unique, its keys."""

    def __init__(self, spec):
        """Take a createIndexes spec ({key, name, unique?, sparse?})."""
        self.spec = spec
        self.name = spec["name"]
        self.paths = [path.split(".") for path in spec["key"]]
        self.unique = bool(spec.get("unique"))
        self.sparse = bool(spec.get("sparse"))
        self.owners = {}        # index key -> _id key of the document holding it

    def keys(self, doc):
        """{index key: field values} for doc.

        One key per array element (per combination, for compound indexes); a
        missing field indexes as null; none at all when the index is sparse
        and doc has none of its fields.
        """
        per_field = []
        present = False
        for parts in self.paths:
            entries = []
            for value in lookup(doc, parts):
                if value is MISSING:
                    entries.append(((5,), None))
                elif isinstance(value, list) and value:
                    present = True
                    entries.extend((sort_key(item), item) for item in value)
                else:
                    present = True
                    entries.append((sort_key(value), value))
            per_field.append(entries)
        if self.sparse and not present:
            return {}
        return {tuple(key for key, _ in combo): tuple(value for _, value in combo)
                for combo in itertools.product(*per_field)}


class Collection:
    """Documents in natural order, keyed by _id, and the secondary indexes."""

    def __init__(self, db, name):
        """An empty collection db.name."""
        self.ns = "%s.%s" % (db, name)
        self.docs = {}          # sort_key(_id) -> document, insertion order
        self.indexes = []

    def index_specs(self):
        """The index documents listIndexes shows, _id_ first."""
        return [{"v": 2, "key": {"_id": 1}, "name": "_id_"}] + [
            index.spec for index in self.indexes]

    def duplicate(self, index_name, pattern, values):
        """The E11000 error for a duplicate key in an index."""
        key_value = dict(zip(pattern, values))
        return CommandError(
            11000, "E11000 duplicate key error collection: %s index: %s dup key: %s"
            % (self.ns, index_name, shell_repr(key_value)),
            keyPattern=pattern, keyValue=key_value)

    def put(self, doc, old=None):
        """Store doc, new or replacing old, enforcing the unique indexes."""
        id_key = sort_key(doc["_id"])
        if old is None and id_key in self.docs:
            raise self.duplicate("_id_", {"_id": 1}, (doc["_id"],))
        claims = []
        for index in self.indexes:
            if index.unique:
                keys = index.keys(doc)
                for key, values in keys.items():
                    owner = index.owners.get(key)
                    if owner is not None and owner != id_key:
                        raise self.duplicate(index.name, index.spec["key"], values)
                claims.append((index, keys))
        if old is not None:
            self._release(old)
        for index, keys in claims:
            for key in keys:
                index.owners[key] = id_key
        self.docs[id_key] = doc

    def remove(self, doc):
        """Delete a stored document."""
        self._release(doc)
        del self.docs[sort_key(doc["_id"])]

    def _release(self, doc):
        """Drop doc's keys from the unique indexes."""
        id_key = sort_key(doc["_id"])
        for index in self.indexes:
            if index.unique:
                for key in index.keys(doc):
                    if index.owners.get(key) == id_key:
                        del index.owners[key]

    def build(self, index):
        """Fill a new unique index from the stored documents (E11000 if it can't)."""
        if not index.unique:
            return
        for id_key, doc in self.docs.items():
            for key, values in index.keys(doc).items():
                if index.owners.setdefault(key, id_key) != id_key:
                    raise self.duplicate(index.name, index.spec["key"], values)

    def select(self, query, sort=None):
        """The documents matching query, in natural order or sorted.

        A query pinning _id uses the _id index and, as mongod's index scan
        does, returns those documents in _id order.
        """
        test = compile_filter(query)
        keys = id_keys(query)
        if keys is None:
            docs = [doc for doc in self.docs.values() if test(doc)]
        else:
            docs = [self.docs[key] for key in sorted(keys)
                    if key in self.docs and test(self.docs[key])]
        return sort_documents(docs, sort) if sort else docs


class Cursor:
    """A server-side cursor over a snapshot of results."""

    def __init__(self, ns, docs, single_batch=False):
        """Results for namespace ns; single_batch closes after one batch."""
        self.id = Int64(random.getrandbits(62) + 1)
        self.ns = ns
        self.docs = docs
        self.position = 0
        self.single_batch = single_batch

    def next_batch(self, size):
        """Up to size documents (any number if None), at most 16 MiB of them."""
        batch = []
        total = 0
        while self.position < len(self.docs) and (size is None or len(batch) < size):
            doc = self.docs[self.position]
            length = len(bson.encode(doc))
            if batch and total + length > MAX_BSON_OBJECT_SIZE:
                break
            batch.append(doc)
            total += length
            self.position += 1
        if self.single_batch:
            self.position = len(self.docs)
        return batch

    @property
    def exhausted(self):
        """True once every result has been sent."""
        return self.position >= len(self.docs)


def _int_option(cmd, name, default=None, minimum=0):
    """An integer field of a command (>= minimum), or default if absent."""
    if name not in cmd:
        return default
    value = cmd[name]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != int(value):
        raise CommandError(14, "BSON field '%s' is the wrong type '%s', expected type 'int'"
                           % (name, type(value).__name__))
    if int(value) < minimum:
        raise CommandError(51024, "BSON field '%s' value must be >= %d, actual value '%s'"
                           % (name, minimum, value))
    return int(value)


def _reject_options(cmd, names):
    """Fail with NotImplemented if cmd uses one of these options."""
    for name in names:
        if name in cmd:
            raise not_implemented("the '%s' option of %s" % (name, next(iter(cmd))))


# ------------------------------------------------------------------ commands

class MongoDouble:
    """The server's state (databases, cursors, connections) and commands."""

    def __init__(self, verbose=False):
        """An empty server; verbose logs every command on stderr."""
        self.lock = threading.RLock()
        self.databases = {}     # db name -> {collection name -> Collection}
        self.cursors = {}       # cursor id -> Cursor
        self.connections = {}   # client TCP port -> connection id
        self.connection_ids = itertools.count(1)
        self.reply_ids = itertools.count(1)
        self.verbose = verbose

    # -- wire glue

    def handle(self, request):
        """mockupdb responder: answer every request (returns True)."""
        try:
            if request.is_command:
                self._command(request)
            elif isinstance(request, mockupdb.OpQuery):
                self._legacy_query(request)
            elif isinstance(request, mockupdb.OpGetMore):
                self._legacy_get_more(request)
            else:
                log("dropped legacy %s from port %d" % (type(request).__name__, request.client_port))
        except OSError as error:        # the client went away mid-reply
            log("could not reply: %s" % error)
        return True

    def _command(self, request):
        """A command over OP_MSG or OP_QUERY: run it, reply unless moreToCome."""
        cmd = request.doc
        if isinstance(request, mockupdb.Command) and "$query" in cmd:
            cmd = cmd["$query"]
        opcode = "OP_MSG" if isinstance(request, mockupdb.OpMsg) else "OP_QUERY"
        try:
            reply = self.run_command(request.namespace, cmd, request.client_port, opcode)
        except CommandError as error:
            reply = error.reply()
        more_to_come = opcode == "OP_MSG" and request.flags & mockupdb.OP_MSG_FLAGS["moreToCome"]
        if not more_to_come:
            request.replies(reply)

    def _legacy_query(self, request):
        """OP_QUERY find: run it as a find command; stream it if Exhaust."""
        db, _, name = request.namespace.partition(".")
        query = request.doc
        cmd = {"find": name}
        if "$query" in query:
            _reject_options(query, ("$min", "$max", "$returnKey", "$showDiskLoc"))
            cmd["filter"] = query["$query"]
            if query.get("$orderby"):
                cmd["sort"] = query["$orderby"]
        else:
            cmd["filter"] = query
        if request.fields:
            cmd["projection"] = request.fields
        cmd["skip"] = request.num_to_skip
        to_return = request.num_to_return
        if to_return < 0 or to_return == 1:
            cmd.update(limit=abs(to_return), singleBatch=True)
        elif to_return > 1:
            cmd["batchSize"] = to_return
        exhaust = request.flags & mockupdb.QUERY_FLAGS["Exhaust"]
        try:
            cursor = self.run_command(db, cmd, request.client_port, "OP_QUERY")["cursor"]
        except CommandError as error:
            self._send_op_reply(request, request.request_id, [{"$err": error.errmsg, "code": error.code}],
                                flags=mockupdb.REPLY_FLAGS["QueryFailure"])
            return
        response_to = self._send_op_reply(request, request.request_id, cursor["firstBatch"], cursor["id"])
        if exhaust and cursor["id"]:
            batch_size = to_return if to_return > 1 else None
            threading.Thread(target=self._stream_exhaust, daemon=True, args=(
                request, request.client_port, cursor["id"], batch_size, response_to,
                len(cursor["firstBatch"]))).start()

    def _stream_exhaust(self, request, port, cursor_id, batch_size, response_to, sent):
        """Send the rest of an exhaust cursor, each OP_REPLY answering the last.

        Runs on a thread of its own: mockupdb holds one server-wide lock while
        a handler runs, so streaming from the handler would stall every other
        connection until this client had read it all, and a client that
        writes elsewhere while it reads the stream (say, upserting what it
        reads through another client) would deadlock.
        """
        db, _, name = request.namespace.partition(".")
        try:
            while cursor_id:
                get_more = {"getMore": cursor_id, "collection": name}
                if batch_size:
                    get_more["batchSize"] = batch_size
                cursor = self.run_command(db, get_more, port, "OP_QUERY")["cursor"]
                cursor_id = cursor["id"]
                response_to = self._send_op_reply(request, response_to, cursor["nextBatch"],
                                                  cursor_id, starting_from=sent)
                sent += len(cursor["nextBatch"])
        except (OSError, CommandError) as error:
            log("exhaust stream to port %d ended: %s" % (port, error))
            with self.lock:
                self.cursors.pop(cursor_id, None)

    def _legacy_get_more(self, request):
        """OP_GET_MORE: the next batch of a cursor an OP_QUERY opened."""
        db, _, name = request.namespace.partition(".")
        get_more = {"getMore": Int64(request.cursor_id), "collection": name}
        if request.num_to_return > 0:
            get_more["batchSize"] = request.num_to_return
        try:
            cursor = self.run_command(db, get_more, request.client_port, "OP_GET_MORE")["cursor"]
        except CommandError:
            self._send_op_reply(request, request.request_id, [],
                                flags=mockupdb.REPLY_FLAGS["CursorNotFound"])
            return
        self._send_op_reply(request, request.request_id, cursor["nextBatch"], cursor["id"])

    def _send_op_reply(self, request, response_to, docs, cursor_id=0, flags=0, starting_from=0):
        """Send one OP_REPLY on request's connection; return its requestID.

        Built here rather than with mockupdb's OpReply because an exhaust
        stream chains each reply to the previous one's requestID, which
        mockupdb picks at random and does not expose.
        """
        request_id = next(self.reply_ids)
        body = struct.pack("<iqii", flags, cursor_id, starting_from, len(docs))
        body += b"".join(bson.encode(doc) for doc in docs)
        header = struct.pack("<iiii", 16 + len(body), request_id, response_to, mockupdb.OP_REPLY)
        request._client.sendall(header + body)     # mockupdb keeps the socket private
        return request_id

    def run_command(self, db, cmd, client_port, opcode):
        """Run one command document against database db; return the reply.

        Failures raise CommandError; a bug in the double becomes code 1
        InternalError (with the traceback on stderr) rather than a hang.
        """
        if not cmd:
            raise CommandError(59, "no such command: ''")
        name = next(iter(cmd))
        if self.verbose:
            log("port %d %s: %s.%s" % (client_port, opcode, db, name))
        handshake = name in ("hello", "isMaster", "ismaster")
        handler = COMMANDS.get(name)
        if handler is None and not handshake:
            raise CommandError(59, "no such command: '%s'" % name)
        with self.lock:
            try:
                if handshake:
                    return self.hello(name, cmd, client_port, opcode)
                return handler(self, db, cmd)
            except CommandError:
                raise
            except Exception as error:
                traceback.print_exc()
                raise CommandError(1, "mongo_double internal error: %r" % error)

    # -- helpers

    def collection(self, db, cmd, create=False):
        """The collection a command names in its first field (None if absent)."""
        name = next(iter(cmd.values()))
        if not isinstance(name, str) or not name:
            raise CommandError(73, "collection name has invalid type %s" % type(name).__name__)
        collections = self.databases.get(db)
        if collections is None or name not in collections:
            if not create:
                return None
            collections = self.databases.setdefault(db, {})
            collections[name] = Collection(db, name)
        return collections[name]

    def select(self, db, cmd, query, sort=None):
        """The documents of the command's collection matching query (none if
        it does not exist, but query and sort are checked all the same)."""
        coll = self.collection(db, cmd)
        if coll is not None:
            return coll.select(query, sort)
        compile_filter(query)
        if sort:
            sort_documents([], sort)
        return []

    def cursor_reply(self, ns, docs, batch_size, single_batch=False):
        """Open a cursor over docs and answer with its first batch."""
        cursor = Cursor(ns, docs, single_batch)
        batch = cursor.next_batch(batch_size)
        if cursor.exhausted:
            cursor_id = Int64(0)
        else:
            cursor_id = cursor.id
            self.cursors[cursor_id] = cursor
        return {"cursor": {"firstBatch": batch, "id": cursor_id, "ns": ns}, "ok": 1.0}

    @staticmethod
    def cursor_batch_size(cmd):
        """The batchSize of a command's cursor: {} option (default 101)."""
        options = cmd.get("cursor", {})
        if not isinstance(options, dict):
            raise CommandError(14, "BSON field 'cursor' is the wrong type, expected type 'object'")
        return _int_option(options, "batchSize", DEFAULT_FIRST_BATCH)

    # -- handshake and server information

    def hello(self, name, cmd, client_port, opcode):
        """hello / isMaster: a writable standalone mongod 5.0.

        A connection's first handshake (the only one carrying client
        metadata) gets a new connectionId and a line on stderr.
        """
        connection_id = self.connections.get(client_port)
        if connection_id is None or "client" in cmd:
            connection_id = next(self.connection_ids)
            self.connections[client_port] = connection_id
            driver = cmd.get("client", {}).get("driver", {})
            log("connection %d: %s via %s from %s %s" % (
                connection_id, name, opcode, driver.get("name", "?"), driver.get("version", "?")))
        reply = {"isWritablePrimary" if name == "hello" else "ismaster": True}
        if cmd.get("helloOk"):
            reply["helloOk"] = True
        reply.update({
            "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
            "maxMessageSizeBytes": MAX_MESSAGE_SIZE_BYTES,
            "maxWriteBatchSize": MAX_WRITE_BATCH_SIZE,
            "localTime": datetime.datetime.now(datetime.timezone.utc),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": connection_id,
            "minWireVersion": MIN_WIRE_VERSION,
            "maxWireVersion": MAX_WIRE_VERSION,
            "readOnly": False,
            "ok": 1.0,
        })
        return reply

    def cmd_ping(self, db, cmd):
        """ping."""
        return {"ok": 1.0}

    def cmd_build_info(self, db, cmd):
        """buildInfo: version 5.0.0."""
        return {"version": SERVER_VERSION, "gitVersion": "mongo_double",
                "versionArray": [5, 0, 0, 0], "bits": 64,
                "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE, "ok": 1.0}

    def cmd_end_sessions(self, db, cmd):
        """endSessions: nothing to end."""
        return {"ok": 1.0}

    # -- writes

    def cmd_insert(self, db, cmd):
        """insert: documents (an ObjectId _id when missing), ordered or not."""
        docs = cmd.get("documents")
        if not isinstance(docs, list):
            raise CommandError(9, "BSON field 'insert.documents' is missing but a required field")
        ordered = cmd.get("ordered", True)
        coll = self.collection(db, cmd, create=True)
        inserted = 0
        errors = []
        for index, doc in enumerate(docs):
            try:
                coll.put(with_id_first(doc))
                inserted += 1
            except CommandError as error:
                errors.append(error.write_error(index))
                if ordered:
                    break
        reply = {"n": inserted}
        if errors:
            reply["writeErrors"] = errors
        reply["ok"] = 1.0
        return reply

    def cmd_update(self, db, cmd):
        """update: each of updates [{q, u, upsert, multi}], ordered or not."""
        updates = cmd.get("updates")
        if not isinstance(updates, list):
            raise CommandError(9, "BSON field 'update.updates' is missing but a required field")
        ordered = cmd.get("ordered", True)
        matched = modified = 0
        upserted = []
        errors = []
        for index, spec in enumerate(updates):
            try:
                _reject_options(spec, ("arrayFilters", "collation"))
                count, changed, new_id = self.update_documents(
                    db, cmd, spec.get("q", {}), spec.get("u", {}),
                    bool(spec.get("upsert")), bool(spec.get("multi")))
            except CommandError as error:
                errors.append(error.write_error(index))
                if ordered:
                    break
                continue
            matched += count
            modified += changed
            if new_id is not None:
                upserted.append({"index": index, "_id": new_id})
        reply = {"n": matched, "nModified": modified}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        reply["ok"] = 1.0
        return reply

    def update_documents(self, db, cmd, query, update, upsert, multi):
        """Apply one update; return (matched, modified, upserted _id or None)."""
        ops = parse_update(update)
        if ops is None and multi:
            raise CommandError(9, "multi update is not supported for replacement-style update")
        targets = self.select(db, cmd, query)
        if not multi:
            targets = targets[:1]
        modified = 0
        for old in targets:
            new = updated_document(old, update, ops)
            if bson.encode(new) != bson.encode(old):
                self.collection(db, cmd).put(new, old)
                modified += 1
        if targets or not upsert:
            return len(targets), modified, None
        doc = upsert_document(query, update, ops)
        self.collection(db, cmd, create=True).put(doc)
        return 1, 0, doc["_id"]

    def cmd_delete(self, db, cmd):
        """delete: each of deletes [{q, limit 0|1}], ordered or not."""
        deletes = cmd.get("deletes")
        if not isinstance(deletes, list):
            raise CommandError(9, "BSON field 'delete.deletes' is missing but a required field")
        ordered = cmd.get("ordered", True)
        removed = 0
        errors = []
        for index, spec in enumerate(deletes):
            try:
                _reject_options(spec, ("collation",))
                limit = spec.get("limit", 0)
                if limit not in (0, 1):
                    raise CommandError(9, "The limit field in delete objects must be 0 or 1. Got %s" % limit)
                targets = self.select(db, cmd, spec.get("q", {}))
            except CommandError as error:
                errors.append(error.write_error(index))
                if ordered:
                    break
                continue
            for doc in targets[:1] if limit else targets:
                self.collection(db, cmd).remove(doc)
                removed += 1
        reply = {"n": removed}
        if errors:
            reply["writeErrors"] = errors
        reply["ok"] = 1.0
        return reply

    def cmd_find_and_modify(self, db, cmd):
        """findAndModify: query, sort, update or remove, new, upsert, fields."""
        _reject_options(cmd, ("arrayFilters", "collation"))
        query = cmd.get("query") or {}
        update = cmd.get("update")
        remove = bool(cmd.get("remove"))
        upsert = bool(cmd.get("upsert"))
        return_new = bool(cmd.get("new"))
        if remove and update is not None:
            raise CommandError(9, "Cannot specify both an update and remove=true")
        if not remove and update is None:
            raise CommandError(9, "Either an update or remove=true must be specified")
        if remove and upsert:
            raise CommandError(9, "Cannot specify both upsert=true and remove=true")
        if remove and return_new:
            raise CommandError(9, "Cannot specify both new=true and remove=true; "
                                  "'remove' always returns the deleted document")
        project = compile_projection(cmd.get("fields"))
        ops = None if remove else parse_update(update)
        found = self.select(db, cmd, query, cmd.get("sort"))[:1]
        coll = self.collection(db, cmd)
        last_error = {"n": 0}
        value = None
        if remove:
            if found:
                coll.remove(found[0])
                last_error["n"] = 1
                value = found[0]
        elif found:
            old = found[0]
            new = updated_document(old, update, ops)
            if bson.encode(new) != bson.encode(old):
                coll.put(new, old)
            last_error = {"n": 1, "updatedExisting": True}
            value = new if return_new else old
        else:
            last_error["updatedExisting"] = False
            if upsert:
                new = upsert_document(query, update, ops)
                self.collection(db, cmd, create=True).put(new)
                last_error.update(n=1, upserted=new["_id"])
                value = new if return_new else None
        if value is not None and project:
            value = project(value)
        return {"lastErrorObject": last_error, "value": value, "ok": 1.0}

    # -- reads

    def cmd_find(self, db, cmd):
        """find: filter, projection, sort, skip, limit, batchSize, singleBatch."""
        _reject_options(cmd, ("collation", "tailable", "awaitData", "min", "max",
                              "returnKey", "showRecordId", "let"))
        skip = _int_option(cmd, "skip", 0)
        limit = _int_option(cmd, "limit", 0)
        batch_size = _int_option(cmd, "batchSize", DEFAULT_FIRST_BATCH)
        project = compile_projection(cmd.get("projection"))
        docs = self.select(db, cmd, cmd.get("filter") or {}, cmd.get("sort"))
        docs = docs[skip:skip + limit] if limit else docs[skip:]
        if project:
            docs = [project(doc) for doc in docs]
        if limit:
            batch_size = min(batch_size, limit)
        ns = "%s.%s" % (db, cmd["find"])
        return self.cursor_reply(ns, docs, batch_size, bool(cmd.get("singleBatch")))

    def cmd_get_more(self, db, cmd):
        """getMore: the next batch of an open cursor (id 0 once exhausted)."""
        cursor_id = cmd["getMore"]
        cursor = self.cursors.get(cursor_id)
        if cursor is None:
            raise CommandError(43, "cursor id %s not found" % cursor_id)
        ns = "%s.%s" % (db, cmd.get("collection"))
        if ns != cursor.ns:
            raise CommandError(13, "Requested getMore on namespace '%s', but cursor belongs to a "
                                   "different namespace %s" % (ns, cursor.ns))
        batch = cursor.next_batch(_int_option(cmd, "batchSize"))
        if cursor.exhausted:
            del self.cursors[cursor_id]
        return {"cursor": {"nextBatch": batch,
                           "id": Int64(0) if cursor.exhausted else cursor.id,
                           "ns": cursor.ns}, "ok": 1.0}

    def cmd_kill_cursors(self, db, cmd):
        """killCursors: forget the listed cursors."""
        killed = []
        not_found = []
        for cursor_id in cmd.get("cursors", []):
            if self.cursors.pop(cursor_id, None) is not None:
                killed.append(cursor_id)
            else:
                not_found.append(cursor_id)
        return {"cursorsKilled": killed, "cursorsNotFound": not_found,
                "cursorsAlive": [], "cursorsUnknown": [], "ok": 1.0}

    def cmd_count(self, db, cmd):
        """count: documents matching query, after skip, up to limit."""
        skip = _int_option(cmd, "skip", 0)
        limit = abs(_int_option(cmd, "limit", 0, minimum=-2 ** 63))
        coll = self.collection(db, cmd)
        query = cmd.get("query") or {}
        if query or coll is None:
            count = len(self.select(db, cmd, query))
        else:
            count = len(coll.docs)
        count = max(0, count - skip)
        return {"n": min(count, limit) if limit else count, "ok": 1.0}

    def cmd_aggregate(self, db, cmd):
        """aggregate on a collection: $match, $group ($sum), $skip, $limit."""
        if not isinstance(cmd["aggregate"], str):
            raise not_implemented("database-level aggregate")
        _reject_options(cmd, ("explain", "collation", "let"))
        if "cursor" not in cmd:
            raise CommandError(9, "The 'cursor' option is required, except for aggregate with "
                                  "the explain argument")
        pipeline = cmd.get("pipeline")
        if not isinstance(pipeline, list):
            raise CommandError(14, "'pipeline' option must be specified as an array")
        batch_size = self.cursor_batch_size(cmd)
        stages = []
        for stage in pipeline:
            if not isinstance(stage, dict) or len(stage) != 1:
                raise CommandError(40323, "A pipeline stage specification object must contain "
                                          "exactly one field.")
            name, arg = next(iter(stage.items()))
            if name not in STAGES:
                if name in KNOWN_STAGES:
                    raise not_implemented("aggregation stage " + name)
                raise CommandError(40324, "Unrecognized pipeline stage name: '%s'" % name)
            stages.append(STAGES[name](arg))
        coll = self.collection(db, cmd)
        docs = list(coll.docs.values()) if coll else []
        for run in stages:
            docs = run(docs)
        return self.cursor_reply("%s.%s" % (db, cmd["aggregate"]), docs, batch_size)

    # -- collections and indexes

    def cmd_create_indexes(self, db, cmd):
        """createIndexes: ascending/descending, unique, sparse; idempotent."""
        specs = cmd.get("indexes")
        if not isinstance(specs, list) or not specs:
            raise CommandError(2, "Must specify at least one index to create")
        coll = self.collection(db, cmd)
        created = coll is None
        if created:
            coll = Collection(db, cmd["createIndexes"])
        new_indexes = []
        before = 1 + len(coll.indexes)
        for spec in specs:
            index = self._new_index(coll, spec, new_indexes)
            if index is not None:
                coll.build(index)
                new_indexes.append(index)
        if created:
            self.databases.setdefault(db, {})[cmd["createIndexes"]] = coll
        coll.indexes.extend(new_indexes)
        reply = {"numIndexesBefore": before, "numIndexesAfter": 1 + len(coll.indexes),
                 "createdCollectionAutomatically": created}
        if not new_indexes:
            reply["note"] = "all indexes already exist"
        reply["ok"] = 1.0
        return reply

    @staticmethod
    def _new_index(coll, spec, pending):
        """An Index for spec, or None when an identical one already exists."""
        if not isinstance(spec, dict) or not isinstance(spec.get("key"), dict) or not spec["key"]:
            raise CommandError(9, "Error in specification %s :: caused by :: The 'key' field "
                                  "must be a non-empty object" % shell_repr(spec))
        if not isinstance(spec.get("name"), str):
            raise CommandError(9, "Error in specification %s :: caused by :: The 'name' field is "
                                  "a required property of an index specification" % shell_repr(spec))
        for path, direction in spec["key"].items():
            if not is_number(direction) or direction == 0:
                raise not_implemented("index type %s on '%s'" % (shell_repr(direction), path))
        for option in spec:
            if option not in ("key", "name", "unique", "sparse", "background", "v"):
                raise not_implemented("index option '%s'" % option)
        normalized = {"v": 2, "key": spec["key"], "name": spec["name"]}
        for option in ("unique", "sparse"):
            if spec.get(option):
                normalized[option] = True
        key_items = list(spec["key"].items())
        for existing in coll.index_specs() + [index.spec for index in pending]:
            same_key = list(existing["key"].items()) == key_items
            same_options = all(existing.get(option) == normalized.get(option)
                               for option in ("unique", "sparse"))
            if existing["name"] == spec["name"]:
                if same_key and same_options:
                    return None
                raise CommandError(86, "An existing index has the same name as the requested index. "
                                       "Requested index: %s, existing index: %s"
                                   % (shell_repr(normalized), shell_repr(existing)))
            if same_key:
                raise CommandError(85, "Index already exists with a different name: %s" % existing["name"])
        return Index(normalized)

    def cmd_list_indexes(self, db, cmd):
        """listIndexes: the _id index and those createIndexes made."""
        coll = self.collection(db, cmd)
        if coll is None:
            raise CommandError(26, "ns does not exist: %s.%s" % (db, cmd["listIndexes"]))
        return self.cursor_reply(coll.ns, coll.index_specs(), self.cursor_batch_size(cmd))

    def cmd_list_collections(self, db, cmd):
        """listCollections: name, type and options, filtered; nameOnly."""
        test = compile_filter(cmd.get("filter") or {})
        infos = []
        for name in self.databases.get(db, {}):
            info = {"name": name, "type": "collection"}
            if not cmd.get("nameOnly"):
                info.update(options={}, info={"readOnly": False},
                            idIndex={"v": 2, "key": {"_id": 1}, "name": "_id_"})
            if test(info):
                infos.append(info)
        return self.cursor_reply("%s.$cmd.listCollections" % db, infos, self.cursor_batch_size(cmd))

    def cmd_drop(self, db, cmd):
        """drop: remove a collection and its indexes."""
        coll = self.collection(db, cmd)
        if coll is None:
            raise CommandError(26, "ns not found")
        del self.databases[db][cmd["drop"]]
        return {"nIndexesWas": 1 + len(coll.indexes), "ns": coll.ns, "ok": 1.0}

    def cmd_drop_database(self, db, cmd):
        """dropDatabase: remove every collection of db."""
        self.databases.pop(db, None)
        return {"dropped": db, "ok": 1.0}


# --------------------------------------------------------- aggregation stages

def _stage_match(spec):
    """$match: keep the documents matching a query filter."""
    test = compile_filter(spec)
    return lambda docs: [doc for doc in docs if test(doc)]


def _stage_skip(count):
    """$skip: drop the first count documents."""
    if not is_number(count) or count < 0:
        raise CommandError(15956, "Argument to $skip cannot be negative")
    return lambda docs: docs[int(count):]


def _stage_limit(count):
    """$limit: keep the first count documents."""
    if not is_number(count) or count <= 0:
        raise CommandError(15958, "the limit must be positive")
    return lambda docs: docs[:int(count)]


def _stage_group(spec):
    """$group by an _id expression, with $sum accumulators.

    count_documents sends {_id: 1, n: {$sum: 1}}; a field path "$f" or an
    object of them also works as _id or as the $sum argument.
    """
    if not isinstance(spec, dict) or "_id" not in spec:
        raise CommandError(15955, "a group specification must include an _id")
    group_key = compile_expression(spec["_id"])
    sums = []
    for field, accumulator in spec.items():
        if field == "_id":
            continue
        if not is_operator_doc(accumulator) or len(accumulator) != 1:
            raise CommandError(40234, "The field '%s' must be an accumulator object" % field)
        name, arg = next(iter(accumulator.items()))
        if name != "$sum":
            if name in KNOWN_ACCUMULATORS:
                raise not_implemented("group accumulator " + name)
            raise CommandError(15952, "unknown group operator '%s'" % name)
        sums.append((field, compile_expression(arg)))

    def run(docs):
        """Group docs and add up each $sum."""
        groups = {}
        for doc in docs:
            key = group_key(doc)
            group = groups.setdefault(sort_key(key), {"_id": key, **{field: 0 for field, _ in sums}})
            for field, value_of in sums:
                value = value_of(doc)
                if is_number(value):
                    group[field] = add_numbers(group[field], value)
        return list(groups.values())
    return run


def compile_expression(expression):
    """A function doc -> value for a constant, "$field.path" or {f: expr}."""
    if isinstance(expression, str) and expression.startswith("$"):
        parts = expression[1:].split(".")

        def field_value(doc):
            """The value at the field path, null when absent."""
            value = get_path(doc, parts)
            return None if value is MISSING else value
        return field_value
    if isinstance(expression, dict):
        if is_operator_doc(expression):
            raise not_implemented("aggregation expression %s" % next(iter(expression)))
        fields = [(name, compile_expression(value)) for name, value in expression.items()]
        return lambda doc: {name: value_of(doc) for name, value_of in fields}
    if isinstance(expression, list):
        raise not_implemented("array expressions")
    return lambda doc: expression


STAGES = {"$match": _stage_match, "$group": _stage_group,
          "$skip": _stage_skip, "$limit": _stage_limit}

COMMANDS = {
    "ping": MongoDouble.cmd_ping,
    "buildInfo": MongoDouble.cmd_build_info,
    "buildinfo": MongoDouble.cmd_build_info,
    "endSessions": MongoDouble.cmd_end_sessions,
    "insert": MongoDouble.cmd_insert,
    "update": MongoDouble.cmd_update,
    "delete": MongoDouble.cmd_delete,
    "findAndModify": MongoDouble.cmd_find_and_modify,
    "findandmodify": MongoDouble.cmd_find_and_modify,
    "find": MongoDouble.cmd_find,
    "getMore": MongoDouble.cmd_get_more,
    "killCursors": MongoDouble.cmd_kill_cursors,
    "count": MongoDouble.cmd_count,
    "aggregate": MongoDouble.cmd_aggregate,
    "createIndexes": MongoDouble.cmd_create_indexes,
    "listIndexes": MongoDouble.cmd_list_indexes,
    "listCollections": MongoDouble.cmd_list_collections,
    "drop": MongoDouble.cmd_drop,
    "dropDatabase": MongoDouble.cmd_drop_database,
}


def log(message):
    """One line on stderr."""
    sys.stderr.write("mongo_double: %s\n" % message)
    sys.stderr.flush()


def main():
    """Serve until SIGTERM or SIGINT; print "port N" and "ready" first."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--port", type=int, default=27017, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1", help="an IPv4 address or name")
    parser.add_argument("--verbose", action="store_true", help="log every command on stderr")
    args = parser.parse_args()

    double = MongoDouble(verbose=args.verbose)
    server = mockupdb.MockupDB(port=args.port)
    # MockupDB's constructor always binds "localhost"; run() binds _address.
    server._address = (args.host, args.port)
    server.autoresponds(double.handle)
    port = server.run()
    print("port %d" % port, flush=True)
    print("ready", flush=True)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
