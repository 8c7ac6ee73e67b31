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

void flag_slot_init(struct flag_snapshot_slot *slot)
{
	pthread_mutex_init(&slot->lock, NULL);
	slot->current = NULL;
	atomic_init(&slot->generation, 0);
}

void flag_slot_destroy(struct flag_snapshot_slot *slot)
{
	flag_snapshot_unref(slot->current);
	slot->current = NULL;
	pthread_mutex_destroy(&slot->lock);
}

/* Makes snap (whose reference passes to the slot) the current snapshot. */
void flag_slot_publish(struct flag_snapshot_slot *slot, struct flag_snapshot *snap)
{
	pthread_mutex_lock(&slot->lock);
	struct flag_snapshot *old = slot->current;
	slot->current = snap;
	atomic_fetch_add_explicit(&slot->generation, 1, memory_order_release);
	pthread_mutex_unlock(&slot->lock);
	/* Freed outside the lock: a big snapshot takes a while to free. */
	flag_snapshot_unref(old);
}

/* A reference to the current snapshot (caller unrefs), or NULL if none
 * has been published yet. */
struct flag_snapshot *flag_slot_acquire(struct flag_snapshot_slot *slot)
{
	pthread_mutex_lock(&slot->lock);
	struct flag_snapshot *s = slot->current ? flag_snapshot_ref(slot->current) : NULL;
	pthread_mutex_unlock(&slot->lock);
	return s;
}

/*
 * For readers that keep a snapshot between uses (a proxy worker): returns
 * held if nothing was published since *seen_generation - one atomic load,
 * no lock - or else releases held and returns the current snapshot.
 */
struct flag_snapshot *flag_slot_refresh(struct flag_snapshot_slot *slot, struct flag_snapshot *held,
					unsigned *seen_generation)
{
	if (atomic_load_explicit(&slot->generation, memory_order_acquire) == *seen_generation)
		return held;
	pthread_mutex_lock(&slot->lock);
	struct flag_snapshot *s = slot->current ? flag_snapshot_ref(slot->current) : NULL;
	*seen_generation = atomic_load_explicit(&slot->generation, memory_order_relaxed);
	pthread_mutex_unlock(&slot->lock);
	flag_snapshot_unref(held);
	return s;
}
