/*
 * idset.c - sets of user ids kept as 64-bit hashes, for the proxy's
 * first-seen cache and its copy of the migrated set: 8 bytes a slot, at
 * most 70% full, so at most about 11.5 bytes per user id and no strings.
 *
 * Two ids share a hash with a probability of about n^2 / 2^65 - for a
 * million users, about 3 in 100 million. For the seen cache that means a
 * user not enqueued by this proxy (the backfill still takes them); for the
 * read guard, an unmigrated user read from the service. Both are
 * documented in docs/design.md.
 */
#include <stdlib.h>
#include <string.h>

#include "proxy/migrate.h"

#define IDSET_MIN 1024

/* A set that grows to hold up to limit ids; when full, a forgetful set
 * starts over empty and any other keeps growing. */
void idset_init(struct idset *s, size_t limit, bool forgetful)
{
	s->mask = IDSET_MIN - 1;
	s->slots = xcalloc(IDSET_MIN, sizeof(*s->slots));
	s->count = 0;
	s->limit = limit;
	s->forgetful = forgetful;
}

void idset_free(struct idset *s)
{
	free(s->slots);
	s->slots = NULL;
}

/* The id's hash; never 0, which marks an empty slot. */
uint64_t idset_hash(const char *id, size_t len)
{
	uint64_t h = strset_hash64(id, len);
	return h ? h : 1;
}

bool idset_has(const struct idset *s, uint64_t h)
{
	for (size_t k = h & s->mask;; k = (k + 1) & s->mask) {
		if (s->slots[k] == h)
			return true;
		if (s->slots[k] == 0)
			return false;
	}
}

static void idset_put(uint64_t *slots, size_t mask, uint64_t h)
{
	size_t k = h & mask;
	while (slots[k] != 0)
		k = (k + 1) & mask;
	slots[k] = h;
}

void idset_add(struct idset *s, uint64_t h)
{
	if (idset_has(s, h))
		return;
	if ((s->count + 1) * 10 > (s->mask + 1) * 7) {
		if (s->forgetful && s->count >= s->limit) {
			memset(s->slots, 0, (s->mask + 1) * sizeof(*s->slots));
			s->count = 0;
		} else {
			size_t cap = (s->mask + 1) * 2;
			uint64_t *slots = xcalloc(cap, sizeof(*slots));
			for (size_t k = 0; k <= s->mask; k++)
				if (s->slots[k])
					idset_put(slots, cap - 1, s->slots[k]);
			free(s->slots);
			s->slots = slots;
			s->mask = cap - 1;
		}
	}
	idset_put(s->slots, s->mask, h);
	s->count++;
}

size_t idset_bytes(const struct idset *s)
{
	return (s->mask + 1) * sizeof(*s->slots);
}
