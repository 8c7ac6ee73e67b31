/* Unit tests for flags/eval.c: the evaluation order and its edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "flags/flags.h"

/* A snapshot with one flag, "f", and a cohort "beta" = {carol, dave}. */
static struct flag_snapshot *snapshot_with(struct flag *f)
{
	struct flag_snapshot *s = flag_snapshot_new(1);
	struct flag_idlist beta = { NULL, 0 };
	flag_idlist_add(&beta, "carol");
	flag_idlist_add(&beta, "dave");
	flag_snapshot_add_cohort(s, "beta", &beta);
	flag_snapshot_add_flag(s, f);
	flag_snapshot_seal(s);
	return s;
}

static struct flag *full_flag(void)
{
	struct flag *f = flag_new("f");
	f->enabled = true;
	f->percent = 0;
	flag_idlist_add(&f->deny, "alice");
	flag_idlist_add(&f->deny, "dave"); /* denied beats the cohort */
	flag_idlist_add(&f->allow, "alice"); /* denied beats allowed */
	flag_idlist_add(&f->allow, "bob");
	flag_idlist_add(&f->cohorts, "beta");
	flag_idlist_add(&f->cohorts, "missing"); /* no such cohort: no members */
	return f;
}

static struct flag_decision eval(const struct flag_snapshot *s, const char *user)
{
	struct flag_decision d;
	flag_eval(flag_snapshot_find(s, "f"), user, strlen(user), &d);
	return d;
}

static void test_order(void **state)
{
	(void)state;
	struct flag *f = full_flag();
	struct flag_snapshot *s = snapshot_with(f);
	struct flag_decision d = eval(s, "alice");
	assert_false(d.on);
	assert_int_equal(d.reason, FLAG_REASON_DENY);
	d = eval(s, "bob");
	assert_true(d.on);
	assert_int_equal(d.reason, FLAG_REASON_ALLOW);
	d = eval(s, "carol");
	assert_true(d.on);
	assert_int_equal(d.reason, FLAG_REASON_COHORT);
	assert_string_equal(d.cohort, "beta");
	d = eval(s, "dave");
	assert_false(d.on);
	assert_int_equal(d.reason, FLAG_REASON_DENY);
	d = eval(s, "erin");
	assert_false(d.on);
	assert_int_equal(d.reason, FLAG_REASON_BUCKET);
	assert_int_equal(d.bucket, flag_bucket("f", 1, "erin", 4));
	flag_snapshot_unref(s);
}

static void test_kill_and_off_beat_everything(void **state)
{
	(void)state;
	const char *users[] = { "alice", "bob", "carol", "erin" };
	for (int variant = 0; variant < 2; variant++) {
		struct flag *f = full_flag();
		f->percent = 10000;
		if (variant == 0)
			f->kill = true;
		else
			f->enabled = false;
		struct flag_snapshot *s = snapshot_with(f);
		for (size_t i = 0; i < 4; i++) {
			struct flag_decision d = eval(s, users[i]);
			assert_false(d.on);
			assert_int_equal(d.reason, variant == 0 ? FLAG_REASON_KILL : FLAG_REASON_OFF);
			assert_in_range(d.bucket, 0, 9999);
		}
		flag_snapshot_unref(s);
	}
}

static void test_percent_edges(void **state)
{
	(void)state;
	struct flag *all = flag_new("f");
	all->enabled = true;
	all->percent = 10000;
	struct flag_snapshot *s = snapshot_with(all);
	char id[16];
	for (int i = 0; i < 1000; i++) {
		snprintf(id, sizeof(id), "u%d", i);
		assert_true(eval(s, id).on);
	}
	flag_snapshot_unref(s);
	struct flag *none = flag_new("f");
	none->enabled = true;
	s = snapshot_with(none);
	for (int i = 0; i < 1000; i++) {
		snprintf(id, sizeof(id), "u%d", i);
		assert_false(eval(s, id).on);
	}
	flag_snapshot_unref(s);
}

/* The user is in exactly when bucket < percent. */
static void test_bucket_boundary(void **state)
{
	(void)state;
	struct flag *f = flag_new("f");
	f->enabled = true;
	struct flag_snapshot *s = snapshot_with(f);
	int bucket = eval(s, "erin").bucket;
	flag_snapshot_unref(s);
	f = flag_new("f");
	f->enabled = true;
	f->percent = bucket;
	s = snapshot_with(f);
	assert_false(eval(s, "erin").on);
	flag_snapshot_unref(s);
	f = flag_new("f");
	f->enabled = true;
	f->percent = bucket + 1;
	s = snapshot_with(f);
	assert_true(eval(s, "erin").on);
	flag_snapshot_unref(s);
}

static void test_reason_names(void **state)
{
	(void)state;
	assert_string_equal(flag_reason_name(FLAG_REASON_KILL), "kill");
	assert_string_equal(flag_reason_name(FLAG_REASON_OFF), "flag-off");
	assert_string_equal(flag_reason_name(FLAG_REASON_DENY), "deny");
	assert_string_equal(flag_reason_name(FLAG_REASON_ALLOW), "allow");
	assert_string_equal(flag_reason_name(FLAG_REASON_COHORT), "cohort");
	assert_string_equal(flag_reason_name(FLAG_REASON_BUCKET), "bucket");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_order),
		cmocka_unit_test(test_kill_and_off_beat_everything),
		cmocka_unit_test(test_percent_edges),
		cmocka_unit_test(test_bucket_boundary),
		cmocka_unit_test(test_reason_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
