/*
 * ctl_cohort.c - `cutoverctl cohort ...`: named sets of user ids that
 * flags refer to. A membership change is audited and published like a
 * flag change, so every watcher reloads.
 */
#include <stdio.h>
#include <string.h>

#include "flags/ctl.h"

static int cohort_change(struct ctl *ctl, int argc, char **argv)
{
	bool add = strcmp(argv[0], "add") == 0;
	const struct ctl_verb *verb = ctl_verb_named(ctl_cohort_verbs, argv[0]);
	int rc = ctl_operands("cohort", verb, &argc, &argv);
	if (rc != CTL_EXIT_OK)
		return rc;
	if (argc < 3)
		return ctl_usage_error("cohort", verb, "expected a cohort name and user ids");
	rc = ctl_check_name("cohort", argv[1]);
	if (rc == CTL_EXIT_OK)
		rc = ctl_check_ids(argv + 2, (size_t)argc - 2);
	if (rc != CTL_EXIT_OK)
		return rc;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	long long changed;
	char err[512];
	int status = flag_store_cohort_change(st, argv[1], add, argv + 2, (size_t)argc - 2, ctl->actor, &changed, err,
					      sizeof(err));
	if (status != STORE_OK)
		return ctl_fail(status, err);
	if (ctl->json)
		printf("{\"cohort\":\"%s\",\"%s\":%lld}\n", argv[1], add ? "added" : "removed", changed);
	else
		printf("cohort %s: %s %lld member%s\n", argv[1], add ? "added" : "removed", changed,
		       changed == 1 ? "" : "s");
	return CTL_EXIT_OK;
}

/* cohort list: every cohort and its size; cohort list NAME: its members. */
static int cohort_list(struct ctl *ctl, int argc, char **argv)
{
	if (argc > 2)
		return ctl_usage_error("cohort", ctl_verb_named(ctl_cohort_verbs, "list"), "expected at most one cohort name");
	if (argc == 2 && ctl_check_name("cohort", argv[1]) != CTL_EXIT_OK)
		return CTL_EXIT_INVALID;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	char err[512];
	struct buf out;
	buf_init(&out);
	if (argc == 2) {
		struct flag_idlist members = { NULL, 0 };
		int status = flag_store_cohort_members(st, argv[1], &members, err, sizeof(err));
		if (status != STORE_OK)
			return ctl_fail(status, err);
		for (size_t i = 0; i < members.n; i++) {
			if (ctl->json) {
				buf_puts(&out, i ? "," : "[");
				json_put_string(&out, members.items[i], strlen(members.items[i]));
			} else {
				buf_printf(&out, "%s%s", i ? "\n" : "", members.items[i]);
			}
		}
		if (ctl->json)
			buf_puts(&out, members.n ? "]" : "[]");
		flag_idlist_free(&members);
	} else {
		struct flag_snapshot *s;
		int status = flag_store_load(st, &s, err, sizeof(err));
		if (status != STORE_OK)
			return ctl_fail(status, err);
		for (size_t i = 0; i < s->ncohorts; i++) {
			if (ctl->json)
				buf_printf(&out, "%s{\"cohort\":\"%s\",\"members\":%zu}", i ? "," : "[",
					   s->cohorts[i].name, s->cohorts[i].members.n);
			else
				buf_printf(&out, "%s%-24s %zu members", i ? "\n" : "", s->cohorts[i].name,
					   s->cohorts[i].members.n);
		}
		if (ctl->json)
			buf_puts(&out, s->ncohorts ? "]" : "[]");
		flag_snapshot_unref(s);
	}
	if (out.len)
		printf("%s\n", out.data);
	buf_free(&out);
	return CTL_EXIT_OK;
}

const struct ctl_verb ctl_cohort_verbs[] = {
	{ "add", "COHORT ID...", "add users to a cohort (creating it)", NULL, cohort_change },
	{ "remove", "COHORT ID...", "remove users from a cohort", NULL, cohort_change },
	{ "list", "[COHORT]", "list cohorts, or one cohort's members", NULL, cohort_list },
	{ NULL, NULL, NULL, NULL, NULL },
};
