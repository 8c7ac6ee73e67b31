/*
 * snapshot.c - an immutable set of flags and cohorts, read from Redis in
 * one consistent step, and the slot that hands it to other threads.
 *
 * Life cycle: flag_snapshot_new, add flags and cohorts, flag_snapshot_seal
 * (sorts, resolves cohorts, builds evaluation indexes); from then on it is
 * read-only and shared by reference counting.
 */
#include <stdlib.h>
#include <string.h>

#include "flags.h"

struct flag_snapshot *flag_snapshot_new(long long version)
{
	struct flag_snapshot *s = xcalloc(1, sizeof(*s));
	atomic_init(&s->refs, 1);
	s->version = version;
	s->loaded_at_us = clock_realtime_us();
	return s;
}

/* Takes ownership of f. */
void flag_snapshot_add_flag(struct flag_snapshot *s, struct flag *f)
{
	s->flags = xrealloc(s->flags, (s->nflags + 1) * sizeof(*s->flags));
	s->flags[s->nflags++] = f;
}

/* Takes ownership of the ids in members (and empties it). */
void flag_snapshot_add_cohort(struct flag_snapshot *s, const char *name, struct flag_idlist *members)
{
	s->cohorts = xrealloc(s->cohorts, (s->ncohorts + 1) * sizeof(*s->cohorts));
	struct cohort *c = &s->cohorts[s->ncohorts++];
	c->name = xstrdup(name);
	c->members = *members;
	c->set = NULL;
	members->items = NULL;
	members->n = 0;
}

static int compare_flags(const void *a, const void *b)
{
	return strcmp((*(struct flag *const *)a)->name, (*(struct flag *const *)b)->name);
}

static int compare_cohorts(const void *a, const void *b)
{
	return strcmp(((const struct cohort *)a)->name, ((const struct cohort *)b)->name);
}

void flag_snapshot_seal(struct flag_snapshot *s)
{
	/* qsort and bsearch take no NULL array, even an empty one. */
	if (s->ncohorts > 1)
		qsort(s->cohorts, s->ncohorts, sizeof(*s->cohorts), compare_cohorts);
	for (size_t i = 0; i < s->ncohorts; i++)
		s->cohorts[i].set = strset_new(s->cohorts[i].members.items, s->cohorts[i].members.n);
	if (s->nflags > 1)
		qsort(s->flags, s->nflags, sizeof(*s->flags), compare_flags);
	for (size_t i = 0; i < s->nflags; i++)
		flag_index_build(s->flags[i], s);
}

struct flag_snapshot *flag_snapshot_ref(struct flag_snapshot *s)
{
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	return s;
}

void flag_snapshot_unref(struct flag_snapshot *s)
{
	if (s == NULL || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (size_t i = 0; i < s->nflags; i++)
		flag_free(s->flags[i]);
	free(s->flags);
	for (size_t i = 0; i < s->ncohorts; i++) {
		free(s->cohorts[i].name);
		flag_idlist_free(&s->cohorts[i].members);
		strset_free(s->cohorts[i].set);
	}
	free(s->cohorts);
	free(s);
}

/* The flag called name, borrowed from s, or NULL. */
const struct flag *flag_snapshot_find(const struct flag_snapshot *s, const char *name)
{
	size_t lo = 0, hi = s->nflags;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, s->flags[mid]->name);
		if (c == 0)
			return s->flags[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const struct cohort *flag_snapshot_cohort(const struct flag_snapshot *s, const char *name)
{
	struct cohort key = { .name = (char *)name };
	if (s->ncohorts == 0)
		return NULL;
	return bsearch(&key, s->cohorts, s->ncohorts, sizeof(*s->cohorts), compare_cohorts);
}

static void *snapshot_ref(void *s)
{
	return flag_snapshot_ref(s);
}

static void snapshot_unref(void *s)
{
	flag_snapshot_unref(s);
}

void flag_slot_init(struct flag_snapshot_slot *slot)
{
	slot_init(&slot->slot, snapshot_ref, snapshot_unref);
}

void flag_slot_destroy(struct flag_snapshot_slot *slot)
{
	slot_destroy(&slot->slot);
}

void flag_slot_publish(struct flag_snapshot_slot *slot, struct flag_snapshot *snap)
{
	slot_publish(&slot->slot, snap);
}

struct flag_snapshot *flag_slot_acquire(struct flag_snapshot_slot *slot)
{
	return slot_acquire(&slot->slot);
}

struct flag_snapshot *flag_slot_refresh(struct flag_snapshot_slot *slot, struct flag_snapshot *held,
					unsigned *seen_generation)
{
	return slot_refresh(&slot->slot, held, seen_generation);
}
