/*
 * eval.c - deciding whether a flag is on for a user.
 *
 * Order: kill -> enabled -> deny -> allow -> cohorts -> percent bucket.
 * The bucket is murmur3_32(salt ":" user_id) mod 10000 and the user is in
 * when bucket < percent, which makes rollouts sticky (same user, same
 * bucket) and monotone (raising 10% to 20% keeps everyone who was in).
 *
 * This runs on the proxy's request path, so a flag carries an index built
 * once per snapshot: the hash state after `salt ":"` and hash sets for the
 * lists. An evaluation then hashes the user id twice and allocates nothing.
 */
#include <stdlib.h>
#include <string.h>

#include "flags.h"

#define FLAG_BUCKETS 10000

struct flag_index {
	struct murmur3 salted; /* state after salt ":" */
	struct strset *allow;
	struct strset *deny;
	const struct cohort **cohorts; /* borrowed from the snapshot */
	size_t ncohorts;
	bool has_lists;
};

static void flag_salt_state(struct murmur3 *m, const char *salt, size_t salt_len)
{
	murmur3_init(m, 0);
	murmur3_update(m, salt, salt_len);
	murmur3_update(m, ":", 1);
}

/* The sticky bucket of user under salt: 0..9999. */
int flag_bucket(const char *salt, size_t salt_len, const char *user, size_t user_len)
{
	struct murmur3 m;
	flag_salt_state(&m, salt, salt_len);
	murmur3_update(&m, user, user_len);
	return (int)(murmur3_final(&m) % FLAG_BUCKETS);
}

/*
 * Builds f's evaluation index, resolving its cohort names in snap (which
 * may be NULL: no cohorts then). A cohort named but absent from snap has
 * no members. The index borrows from f and snap; it is freed with f.
 */
void flag_index_build(struct flag *f, const struct flag_snapshot *snap)
{
	flag_index_free(f->index);
	struct flag_index *ix = xcalloc(1, sizeof(*ix));
	flag_salt_state(&ix->salted, f->salt, strlen(f->salt));
	ix->allow = strset_new(f->allow.items, f->allow.n);
	ix->deny = strset_new(f->deny.items, f->deny.n);
	ix->cohorts = xcalloc(f->cohorts.n + 1, sizeof(*ix->cohorts));
	for (size_t i = 0; snap && i < f->cohorts.n; i++) {
		const struct cohort *c = flag_snapshot_cohort(snap, f->cohorts.items[i]);
		if (c != NULL)
			ix->cohorts[ix->ncohorts++] = c;
	}
	ix->has_lists = f->allow.n > 0 || f->deny.n > 0 || ix->ncohorts > 0;
	f->index = ix;
}

void flag_index_free(struct flag_index *ix)
{
	if (ix == NULL)
		return;
	strset_free(ix->allow);
	strset_free(ix->deny);
	free(ix->cohorts);
	free(ix);
}

/* Evaluates f (whose index is built) for user[0..len). Never fails. */
void flag_eval(const struct flag *f, const char *user, size_t len, struct flag_decision *out)
{
	const struct flag_index *ix = f->index;
	struct murmur3 m = ix->salted;
	murmur3_update(&m, user, len);
	out->bucket = (int)(murmur3_final(&m) % FLAG_BUCKETS);
	out->cohort = NULL;
	out->on = false;
	if (f->kill) {
		out->reason = FLAG_REASON_KILL;
		return;
	}
	if (!f->enabled) {
		out->reason = FLAG_REASON_OFF;
		return;
	}
	if (ix->has_lists) {
		uint32_t h = strset_hash(user, len);
		if (strset_contains(ix->deny, h, user, len)) {
			out->reason = FLAG_REASON_DENY;
			return;
		}
		out->on = true;
		if (strset_contains(ix->allow, h, user, len)) {
			out->reason = FLAG_REASON_ALLOW;
			return;
		}
		for (size_t i = 0; i < ix->ncohorts; i++) {
			if (strset_contains(ix->cohorts[i]->set, h, user, len)) {
				out->reason = FLAG_REASON_COHORT;
				out->cohort = ix->cohorts[i]->name;
				return;
			}
		}
	}
	out->reason = FLAG_REASON_BUCKET;
	out->on = out->bucket < f->percent;
}

const char *flag_reason_name(enum flag_reason reason)
{
	switch (reason) {
	case FLAG_REASON_KILL: return "kill";
	case FLAG_REASON_OFF: return "flag-off";
	case FLAG_REASON_DENY: return "deny";
	case FLAG_REASON_ALLOW: return "allow";
	case FLAG_REASON_COHORT: return "cohort";
	case FLAG_REASON_BUCKET: return "bucket";
	}
	return "unknown";
}
