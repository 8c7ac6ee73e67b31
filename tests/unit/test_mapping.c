/*
 * Unit tests for migrator/mapping.c: keep, drop, rename and default on
 * documents, the rules refused when they are added (so at config time),
 * and the collisions only a document can reveal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "migrator/migrator.h"

#define WHY_MAX 256

typedef int (*add_fn)(struct mapping *, const char *, char *, size_t);

struct rule_case {
	add_fn add;
	const char *rule;
	const char *fragment; /* NULL: accepted */
};

static void add_ok(struct mapping *m, add_fn add, const char *rule)
{
	char why[WHY_MAX] = "";
	if (add(m, rule, why, sizeof(why)) != 0)
		fail_msg("rule '%s' refused: %s", rule, why);
}

static bson_t *json_doc(const char *json)
{
	bson_error_t error;
	bson_t *doc = bson_new_from_json((const uint8_t *)json, -1, &error);
	if (doc == NULL)
		fail_msg("bad test JSON %s: %s", json, error.message);
	return doc;
}

/* Applies m to the JSON document in and compares the result, as
 * canonical extended JSON, with want. */
static void expect_mapped(const struct mapping *m, const char *in, const char *want)
{
	bson_t *src = json_doc(in), *expected = json_doc(want), out = BSON_INITIALIZER;
	char why[WHY_MAX] = "";
	if (mapping_apply(m, src, &out, why, sizeof(why)) != 0)
		fail_msg("mapping %s failed: %s", in, why);
	char *got = bson_as_canonical_extended_json(&out, NULL);
	char *exp = bson_as_canonical_extended_json(expected, NULL);
	if (strcmp(got, exp) != 0)
		fail_msg("mapping %s\nwant %s\ngot  %s", in, exp, got);
	bson_free(got);
	bson_free(exp);
	bson_destroy(&out);
	bson_destroy(src);
	bson_destroy(expected);
}

static void expect_apply_error(const struct mapping *m, const char *in, const char *fragment)
{
	bson_t *src = json_doc(in), out = BSON_INITIALIZER;
	char why[WHY_MAX] = "";
	if (mapping_apply(m, src, &out, why, sizeof(why)) != -1 || strstr(why, fragment) == NULL)
		fail_msg("mapping %s: want an error with '%s', got '%s'", in, fragment, why);
	bson_destroy(&out);
	bson_destroy(src);
}

/* Adds the rules of cases to one fresh mapping, in order; each must be
 * accepted or refused as the case says. */
static void expect_rules(const struct rule_case *cases, size_t n)
{
	struct mapping m;
	mapping_init(&m);
	for (size_t i = 0; i < n; i++) {
		char why[WHY_MAX] = "";
		int rc = cases[i].add(&m, cases[i].rule, why, sizeof(why));
		if (cases[i].fragment == NULL && rc != 0)
			fail_msg("rule '%s' refused: %s", cases[i].rule, why);
		if (cases[i].fragment != NULL && (rc != -1 || strstr(why, cases[i].fragment) == NULL))
			fail_msg("rule '%s': want an error with '%s', got rc %d '%s'", cases[i].rule,
				 cases[i].fragment, rc, why);
	}
	mapping_free(&m);
}

#define EXPECT_RULES(cases) expect_rules(cases, sizeof(cases) / sizeof(cases[0]))

static void test_empty_mapping_copies(void **state)
{
	(void)state;
	struct mapping m;
	mapping_init(&m);
	expect_mapped(&m, "{\"_id\": \"u1\", \"a\": 1, \"b\": {\"c\": [1, 2]}}",
		      "{\"_id\": \"u1\", \"a\": 1, \"b\": {\"c\": [1, 2]}}");
	mapping_free(&m);
}

static void test_keep(void **state)
{
	(void)state;
	struct mapping m;
	mapping_init(&m);
	add_ok(&m, mapping_add_keep, "name");
	add_ok(&m, mapping_add_keep, "email");
	/* _id is kept without being listed; the order is the document's. */
	expect_mapped(&m, "{\"_id\": \"u1\", \"email\": \"e\", \"secret\": 1, \"name\": \"n\"}",
		      "{\"_id\": \"u1\", \"email\": \"e\", \"name\": \"n\"}");
	expect_mapped(&m, "{\"_id\": \"u2\"}", "{\"_id\": \"u2\"}");
	assert_string_equal(mapping_output_name(&m, "name"), "name");
	assert_string_equal(mapping_output_name(&m, "_id"), "_id");
	assert_null(mapping_output_name(&m, "secret"));
	add_ok(&m, mapping_add_drop, "_id");
	expect_mapped(&m, "{\"_id\": \"u1\", \"name\": \"n\"}", "{\"name\": \"n\"}");
	mapping_free(&m);
}

static void test_drop(void **state)
{
	(void)state;
	struct mapping m;
	mapping_init(&m);
	add_ok(&m, mapping_add_drop, "passwordHash");
	add_ok(&m, mapping_add_drop, "legacyFlags");
	expect_mapped(&m, "{\"_id\": 7, \"passwordHash\": \"x\", \"name\": \"n\", \"legacyFlags\": 3}",
		      "{\"_id\": 7, \"name\": \"n\"}");
	assert_null(mapping_output_name(&m, "passwordHash"));
	assert_string_equal(mapping_output_name(&m, "anything"), "anything");
	mapping_free(&m);
}

static void test_rename(void **state)
{
	(void)state;
	struct mapping m;
	mapping_init(&m);
	add_ok(&m, mapping_add_rename, "emailAddress:email");
	add_ok(&m, mapping_add_rename, "_id:legacyId");
	/* Swapping two names is allowed: neither keeps its own. */
	add_ok(&m, mapping_add_rename, "first:last");
	add_ok(&m, mapping_add_rename, "last:first");
	assert_int_equal(mapping_finish(&m, (char[WHY_MAX]){ 0 }, WHY_MAX), 0);
	expect_mapped(&m, "{\"_id\": \"u1\", \"emailAddress\": \"e\", \"first\": \"f\", \"last\": \"l\", \"x\": 1}",
		      "{\"legacyId\": \"u1\", \"email\": \"e\", \"last\": \"f\", \"first\": \"l\", \"x\": 1}");
	assert_string_equal(mapping_output_name(&m, "emailAddress"), "email");
	mapping_free(&m);
}

static void test_rename_with_keep(void **state)
{
	(void)state;
	struct mapping m;
	char why[WHY_MAX] = "";
	mapping_init(&m);
	add_ok(&m, mapping_add_keep, "emailAddress");
	add_ok(&m, mapping_add_keep, "email");
	add_ok(&m, mapping_add_rename, "emailAddress:email");
	assert_int_equal(mapping_finish(&m, why, sizeof(why)), -1);
	assert_non_null(strstr(why, "'email' is kept too"));
	mapping_free(&m);
}

static void test_defaults(void **state)
{
	(void)state;
	struct mapping m;
	mapping_init(&m);
	add_ok(&m, mapping_add_rename, "lang:locale");
	add_ok(&m, mapping_add_default, "locale:\"en\"");
	add_ok(&m, mapping_add_default, "optIn:false");
	add_ok(&m, mapping_add_default, "score:1.5");
	add_ok(&m, mapping_add_default, "tags:[\"a\", {\"b\": null}]");
	add_ok(&m, mapping_add_default, "since:{\"$date\": \"2024-01-01T00:00:00Z\"}");
	add_ok(&m, mapping_add_default, "note:\"a:b\"");
	/* Set where absent, after the renames; present values win. */
	expect_mapped(&m, "{\"_id\": 1, \"lang\": \"fr\", \"optIn\": true}",
		      "{\"_id\": 1, \"locale\": \"fr\", \"optIn\": true, \"score\": 1.5, "
		      "\"tags\": [\"a\", {\"b\": null}], \"since\": {\"$date\": \"2024-01-01T00:00:00Z\"}, "
		      "\"note\": \"a:b\"}");
	bson_iter_t it;
	assert_true(bson_iter_init_find(&it, m.defaults, "since"));
	assert_int_equal(bson_iter_type(&it), BSON_TYPE_DATE_TIME);
	mapping_free(&m);
}

static void test_apply_collisions(void **state)
{
	(void)state;
	struct mapping m;
	mapping_init(&m);
	add_ok(&m, mapping_add_rename, "emailAddress:email");
	expect_apply_error(&m, "{\"_id\": 1, \"emailAddress\": \"a\", \"email\": \"b\"}",
			   "renaming 'emailAddress' to 'email': the document has 'email' too");
	expect_apply_error(&m, "{\"_id\": 1, \"email\": \"b\", \"emailAddress\": \"a\"}",
			   "renaming 'emailAddress' to 'email'");
	expect_apply_error(&m, "{\"_id\": 1, \"x\": 1, \"x\": 2}", "field 'x' appears twice");
	mapping_free(&m);
}

static void test_field_names(void **state)
{
	(void)state;
	char long_name[300];
	memset(long_name, 'a', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	const struct rule_case cases[] = {
		{ mapping_add_keep, "", "1 to 256 bytes" },
		{ mapping_add_keep, long_name, "1 to 256 bytes" },
		{ mapping_add_keep, "a.b", "nested fields are not supported" },
		{ mapping_add_keep, "$where", "starts with '$'" },
		{ mapping_add_keep, "a:b", "has a ':'" },
		{ mapping_add_keep, "tab\there", "control character" },
		{ mapping_add_keep, "bad\xff", "not UTF-8" },
		{ mapping_add_keep, "prénom", NULL },
		{ mapping_add_keep, "prénom", "listed twice" },
	};
	EXPECT_RULES(cases);
}

static void test_rules_refused(void **state)
{
	(void)state;
	const struct rule_case keep_drop[] = {
		{ mapping_add_keep, "name", NULL },
		{ mapping_add_drop, "name", "both kept and dropped" },
		{ mapping_add_drop, "secret", "not kept anyway" },
		{ mapping_add_drop, "_id", NULL },
		{ mapping_add_drop, "_id", "listed twice" },
		{ mapping_add_rename, "secret:s", "'secret' is not kept" },
		{ mapping_add_rename, "_id:id", "'_id' is dropped" },
	};
	EXPECT_RULES(keep_drop);
	const struct rule_case renames[] = {
		{ mapping_add_drop, "gone", NULL },
		{ mapping_add_rename, "gone:here", "'gone' is dropped" },
		{ mapping_add_rename, "nocolon", "has no ':'" },
		{ mapping_add_rename, "a:a", "renames a field to itself" },
		{ mapping_add_rename, ":b", "write it old:new" },
		{ mapping_add_rename, "a:b.c", "nested fields" },
		{ mapping_add_rename, "a:b", NULL },
		{ mapping_add_rename, "a:c", "'a' is renamed twice" },
		{ mapping_add_rename, "c:b", "'b' is already the new name of 'a'" },
	};
	EXPECT_RULES(renames);
}

static void test_bad_defaults(void **state)
{
	(void)state;
	const struct rule_case cases[] = {
		{ mapping_add_default, "x", "has no ':'" },
		{ mapping_add_default, "x:", "not a JSON value" },
		{ mapping_add_default, "x:tru", "not a JSON value" },
		{ mapping_add_default, "x:'single'", "not a JSON value" },
		{ mapping_add_default, "x:{\"a\":1", "not a JSON value" },
		{ mapping_add_default, "x:[1,]", "not a JSON value" },
		{ mapping_add_default, "x:1, \"y\":2", "more than one JSON value" },
		{ mapping_add_default, "x:{\"$date\": \"yesterday\"}", "default for 'x'" },
		{ mapping_add_default, "a.b:1", "nested fields" },
		{ mapping_add_default, "x:1", NULL },
		{ mapping_add_default, "x:2", "given twice" },
		{ mapping_add_rename, "old:new", NULL },
		{ mapping_add_default, "old:1", "give it for the new name" },
		{ mapping_add_default, "new:1", NULL },
	};
	EXPECT_RULES(cases);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_empty_mapping_copies), cmocka_unit_test(test_keep),
		cmocka_unit_test(test_drop),                 cmocka_unit_test(test_rename),
		cmocka_unit_test(test_rename_with_keep),     cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_apply_collisions),     cmocka_unit_test(test_field_names),
		cmocka_unit_test(test_rules_refused),        cmocka_unit_test(test_bad_defaults),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
