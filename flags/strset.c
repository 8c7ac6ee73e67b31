/*
 * strset.c - an immutable hash set of strings for allow, deny and cohort
 * lookups on the request path: open addressing with linear probing, at
 * most half full, built once per snapshot. The caller hashes the user id
 * once (strset_hash) and probes every set with the same hash.
 *
 * The set borrows the strings it is built from: they must outlive it
 * (in a snapshot, the flag or cohort that owns both).
 */
#include <stdlib.h>
#include <string.h>

#include "flags.h"


struct strset_slot {
	const char *s; /* NULL when empty */
	uint32_t hash;
	uint32_t len;
};

struct strset {
	size_t mask;
	struct strset_slot slots[];
};

/*
 * A word-at-a-time multiplicative hash: several times cheaper than
 * murmur3 for the short ids of a request, which matters because every
 * evaluation of a flag with lists computes it. The keys of a set come
 * from operators, so probing it with chosen ids cannot make it slower
 * than its own longest cluster.
 */
uint64_t strset_hash64(const char *s, size_t len)
{
	uint64_t h = 0x9e3779b97f4a7c15u ^ len;
	for (; len >= 8; s += 8, len -= 8) {
		uint64_t w;
		memcpy(&w, s, 8);
		h = (h ^ w) * 0xff51afd7ed558ccdu;
		h ^= h >> 32;
	}
	if (len > 0) {
		uint64_t w = 0;
		memcpy(&w, s, len);
		h = (h ^ w) * 0xff51afd7ed558ccdu;
		h ^= h >> 32;
	}
	h *= 0xc4ceb9fe1a85ec53u;
	return h ^ (h >> 29);
}

uint32_t strset_hash(const char *s, size_t len)
{
	return (uint32_t)strset_hash64(s, len);
}

/* Builds a set of items[0..n); duplicates collapse. Caller frees with
 * strset_free. */
struct strset *strset_new(char *const *items, size_t n)
{
	size_t cap = 8;
	while (cap < 2 * n)
		cap *= 2;
	struct strset *set = xcalloc(1, sizeof(*set) + cap * sizeof(set->slots[0]));
	set->mask = cap - 1;
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(items[i]);
		uint32_t h = strset_hash(items[i], len);
		if (strset_contains(set, h, items[i], len))
			continue;
		size_t k = h & set->mask;
		while (set->slots[k].s != NULL)
			k = (k + 1) & set->mask;
		set->slots[k] = (struct strset_slot){ items[i], h, (uint32_t)len };
	}
	return set;
}

void strset_free(struct strset *set)
{
	free(set);
}

bool strset_contains(const struct strset *set, uint32_t hash, const char *s, size_t len)
{
	for (size_t k = hash & set->mask;; k = (k + 1) & set->mask) {
		const struct strset_slot *slot = &set->slots[k];
		if (slot->s == NULL)
			return false;
		if (slot->hash == hash && slot->len == len && memcmp(slot->s, s, len) == 0)
			return true;
	}
}
