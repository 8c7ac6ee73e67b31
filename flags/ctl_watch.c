/*
 * ctl_watch.c - `cutoverctl flag watch`: runs the same watcher the proxy
 * uses and prints what each new snapshot changed, and every change of
 * connection state. Each JSON line carries applied_at_us (wall clock,
 * microseconds) so tests and operators can measure propagation delay.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "flags/ctl.h"

struct watch {
	bool json;
	struct event_base *base;
};

static void watch_emit(const struct watch *w, const char *event, long long version, const char *subject,
		       const char *change)
{
	int64_t now_us = clock_realtime_us();
	char when[32];
	format_utc_ms(now_us / 1000, when, sizeof(when));
	struct buf line;
	buf_init(&line);
	if (w->json) {
		buf_printf(&line, "{\"event\":\"%s\",\"time\":\"%s\",\"applied_at_us\":%lld", event, when,
			   (long long)now_us);
		if (version >= 0)
			buf_printf(&line, ",\"version\":%lld", version);
		if (subject) {
			buf_puts(&line, ",\"subject\":");
			json_put_string(&line, subject, strlen(subject));
		}
		buf_puts(&line, ",\"change\":");
		json_put_string(&line, change, strlen(change));
		buf_putc(&line, '}');
	} else {
		buf_printf(&line, "%s ", when);
		if (version >= 0)
			buf_printf(&line, "v%lld ", version);
		buf_printf(&line, "%s%s%s", subject ? subject : "", subject ? ": " : "", change);
	}
	printf("%s\n", line.data);
	fflush(stdout);
	buf_free(&line);
}

static void watch_diff_cohorts(const struct watch *w, const struct flag_snapshot *old,
			       const struct flag_snapshot *cur)
{
	for (int pass = 0; pass < 2; pass++) {
		const struct flag_snapshot *a = pass ? old : cur, *b = pass ? cur : old;
		for (size_t i = 0; i < a->ncohorts; i++) {
			const struct cohort *ca = &a->cohorts[i], *cb = flag_snapshot_cohort(b, ca->name);
			size_t delta = 0;
			for (size_t k = 0; k < ca->members.n; k++)
				if (!cb || !strset_contains(cb->set, strset_hash(ca->members.items[k],
										    strlen(ca->members.items[k])),
							    ca->members.items[k], strlen(ca->members.items[k])))
					delta++;
			if (delta == 0)
				continue;
			char subject[FLAG_NAME_MAX + 8], change[64];
			snprintf(subject, sizeof(subject), "cohort:%s", ca->name);
			snprintf(change, sizeof(change), "%s %zu member%s", pass ? "removed" : "added", delta,
				 delta == 1 ? "" : "s");
			watch_emit(w, "change", cur->version, subject, change);
		}
	}
}

static void watch_on_snapshot(const struct flag_snapshot *old, const struct flag_snapshot *cur, void *arg)
{
	const struct watch *w = arg;
	char summary[96];
	if (old == NULL) {
		snprintf(summary, sizeof(summary), "loaded %zu flags, %zu cohorts", cur->nflags, cur->ncohorts);
		watch_emit(w, "snapshot", cur->version, NULL, summary);
		return;
	}
	struct buf change;
	buf_init(&change);
	for (size_t i = 0; i < cur->nflags; i++) {
		const struct flag *was = flag_snapshot_find(old, cur->flags[i]->name);
		if (was && flag_equal(was, cur->flags[i]))
			continue;
		buf_reset(&change);
		flag_diff(was, cur->flags[i], &change);
		watch_emit(w, "change", cur->version, cur->flags[i]->name, change.data);
	}
	for (size_t i = 0; i < old->nflags; i++)
		if (flag_snapshot_find(cur, old->flags[i]->name) == NULL)
			watch_emit(w, "change", cur->version, old->flags[i]->name, "deleted");
	watch_diff_cohorts(w, old, cur);
	buf_free(&change);
}

static void watch_on_state(enum watcher_state state, const char *detail, void *arg)
{
	const struct watch *w = arg;
	char change[640];
	snprintf(change, sizeof(change), "%s: %s", watcher_state_name(state), detail);
	watch_emit(w, "state", -1, NULL, change);
}

static void watch_on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig, (void)what;
	event_base_loopbreak(arg);
}

int ctl_flag_watch(struct ctl *ctl, int argc, char **argv)
{
	(void)argv;
	if (argc != 1)
		return ctl_usage_error("flag", ctl_verb_named(ctl_flag_verbs, "watch"), "watch takes no arguments");
	struct watch w = { .json = ctl->json, .base = event_base_new() };
	struct flag_snapshot_slot slot;
	flag_slot_init(&slot);
	struct watcher_hooks hooks = { watch_on_snapshot, watch_on_state, &w };
	char err[512];
	struct flag_watcher *watcher = flag_watcher_new(w.base, ctl->redis_url, ctl->prefix, &slot, &hooks, err,
							sizeof(err));
	int rc = CTL_EXIT_OK;
	if (watcher == NULL) {
		fprintf(stderr, "cutoverctl: %s\n", err);
		rc = CTL_EXIT_USAGE;
	} else {
		struct event *sigint = evsignal_new(w.base, SIGINT, watch_on_signal, w.base);
		struct event *sigterm = evsignal_new(w.base, SIGTERM, watch_on_signal, w.base);
		event_add(sigint, NULL);
		event_add(sigterm, NULL);
		event_base_dispatch(w.base);
		event_free(sigint);
		event_free(sigterm);
		flag_watcher_free(watcher);
	}
	flag_slot_destroy(&slot);
	event_base_free(w.base);
	return rc;
}
