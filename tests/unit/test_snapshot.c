/*
 * Unit tests for flags/snapshot.c: lookups, reference counting, and the
 * slot through which a writer hands snapshots to reader threads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "flags/flags.h"

static struct flag_snapshot *snapshot_of(long long version, const char *const *names, size_t n)
{
	struct flag_snapshot *s = flag_snapshot_new(version);
	for (size_t i = 0; i < n; i++)
		flag_snapshot_add_flag(s, flag_new(names[i]));
	flag_snapshot_seal(s);
	return s;
}

static void test_find(void **state)
{
	(void)state;
	const char *names[] = { "zeta", "alpha", "mid", "beta.v2" };
	struct flag_snapshot *s = snapshot_of(7, names, 4);
	for (size_t i = 0; i < 4; i++)
		assert_string_equal(flag_snapshot_find(s, names[i])->name, names[i]);
	assert_null(flag_snapshot_find(s, "absent"));
	assert_null(flag_snapshot_find(s, ""));
	assert_string_equal(s->flags[0]->name, "alpha"); /* sorted */
	assert_null(flag_snapshot_cohort(s, "beta"));
	flag_snapshot_unref(s);
}

static void test_slot_hands_over_without_freeing_held(void **state)
{
	(void)state;
	struct flag_snapshot_slot slot;
	flag_slot_init(&slot);
	assert_null(flag_slot_acquire(&slot));
	const char *one[] = { "a" };
	flag_slot_publish(&slot, snapshot_of(1, one, 1));
	unsigned seen = 0;
	struct flag_snapshot *held = flag_slot_refresh(&slot, NULL, &seen);
	assert_non_null(held);
	assert_int_equal(held->version, 1);
	/* Nothing new: the same pointer back, no lock taken. */
	assert_ptr_equal(flag_slot_refresh(&slot, held, &seen), held);
	flag_slot_publish(&slot, snapshot_of(2, one, 1));
	/* The reader still holds version 1: it must stay valid. */
	assert_string_equal(flag_snapshot_find(held, "a")->name, "a");
	held = flag_slot_refresh(&slot, held, &seen);
	assert_int_equal(held->version, 2);
	flag_snapshot_unref(held);
	flag_slot_destroy(&slot);
}

struct reader {
	struct flag_snapshot_slot *slot;
	long long last_version;
	long long refreshes;
	int regressions;
};

#define PUBLISHES 2000

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	unsigned seen = 0;
	struct flag_snapshot *held = NULL;
	while (r->last_version < PUBLISHES) {
		held = flag_slot_refresh(r->slot, held, &seen);
		if (held == NULL)
			continue;
		/* Touch the snapshot: ASan would catch a use after free. */
		const struct flag *f = flag_snapshot_find(held, "a");
		if (f == NULL || held->version < r->last_version)
			r->regressions++;
		r->last_version = held->version;
		r->refreshes++;
	}
	flag_snapshot_unref(held);
	return NULL;
}

/* Readers refreshing in a loop while a writer publishes: every reader
 * sees versions only move forward and ends on the last one. */
static void test_concurrent_readers(void **state)
{
	(void)state;
	struct flag_snapshot_slot slot;
	flag_slot_init(&slot);
	struct reader readers[3];
	pthread_t threads[3];
	for (int i = 0; i < 3; i++) {
		readers[i] = (struct reader){ &slot, 0, 0, 0 };
		pthread_create(&threads[i], NULL, reader_main, &readers[i]);
	}
	const char *one[] = { "a" };
	for (long long v = 1; v <= PUBLISHES; v++)
		flag_slot_publish(&slot, snapshot_of(v, one, 1));
	for (int i = 0; i < 3; i++) {
		pthread_join(threads[i], NULL);
		assert_int_equal(readers[i].regressions, 0);
		assert_int_equal(readers[i].last_version, PUBLISHES);
	}
	flag_slot_destroy(&slot);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_find),
		cmocka_unit_test(test_slot_hands_over_without_freeing_held),
		cmocka_unit_test(test_concurrent_readers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
