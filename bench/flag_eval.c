/*
 * bench/flag_eval.c - flag evaluations per second on one core, for a
 * flag shaped like a real rollout: a deny and an allow list, a cohort of
 * 1,000 users and a percentage. Run with `make bench`. Not a test: it
 * prints figures and asserts nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flags/flags.h"

#define USERS 65536
#define ROUNDS 100

int main(void)
{
	struct flag_snapshot *s = flag_snapshot_new(1);
	struct flag_idlist members = { NULL, 0 };
	char id[48];
	for (int i = 0; i < 1000; i++) {
		snprintf(id, sizeof(id), "beta-%d", i);
		flag_idlist_add(&members, id);
	}
	flag_snapshot_add_cohort(s, "beta", &members);
	struct flag *f = flag_new("users-read");
	f->enabled = true;
	f->percent = 1250;
	flag_idlist_add(&f->deny, "blocked-user");
	flag_idlist_add(&f->allow, "qa-user");
	flag_idlist_add(&f->cohorts, "beta");
	flag_snapshot_add_flag(s, f);
	flag_snapshot_seal(s);

	/* ObjectId-like 24-character ids, as a Mongo-backed app would have. */
	char (*ids)[25] = malloc(USERS * sizeof(*ids));
	for (int i = 0; i < USERS; i++)
		snprintf(ids[i], sizeof(ids[i]), "65a1f0c2%016x", (unsigned)i * 2654435761u);

	const struct flag *flag = flag_snapshot_find(s, "users-read");
	long on = 0;
	int64_t start = clock_monotonic_us();
	for (int r = 0; r < ROUNDS; r++) {
		for (int i = 0; i < USERS; i++) {
			struct flag_decision d;
			flag_eval(flag, ids[i], 24, &d);
			on += d.on;
		}
	}
	int64_t elapsed = clock_monotonic_us() - start;
	double evals = (double)USERS * ROUNDS;
	printf("flag_eval: %.0f evaluations in %.3f s: %.1f million/s, %.1f ns each (%.2f%% on)\n", evals,
	       elapsed / 1e6, evals / elapsed, elapsed * 1000.0 / evals, 100.0 * on / evals);
	free(ids);
	flag_snapshot_unref(s);
	return 0;
}
