/*
 * ctl_flag.c - `cutoverctl flag ...`: every change goes through
 * flag_store_update (compare-and-set, audited, published) and prints
 * what changed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flags/ctl.h"

/* One edit of a flag, applied by edit_apply inside flag_store_update. */
enum edit_list { EDIT_LIST_NONE, EDIT_LIST_ALLOW, EDIT_LIST_DENY, EDIT_LIST_COHORTS };
static const char *const edit_list_names[] = { "", "allow", "deny", "cohorts" };

struct flag_edit {
	int enabled; /* -1: leave as is */
	int kill;    /* -1: leave as is */
	int percent; /* -1: leave as is */
	const char *description;
	const char *owner;
	const char *salt; /* create only: changing it later would move every user */
	enum edit_list list;
	bool remove;
	char **ids;
	size_t nids;
	struct flag *before; /* the flag as read, for the printed diff */
	bool syncback;       /* kill, rollback: then say how far legacy is behind */
	bool wait_synced;    /* --wait-synced: and wait until it is not */
	double timeout_s;    /* --timeout, 0 for SYNC_WAIT_DEFAULT_S */
};

#define SYNC_WAIT_DEFAULT_S 60

static const struct flag_edit EDIT_NONE = { .enabled = -1, .kill = -1, .percent = -1 };

static int edit_apply(struct flag *f, void *arg, char *err, size_t errlen)
{
	struct flag_edit *e = arg;
	flag_free(e->before);
	e->before = flag_clone(f);
	if (e->enabled >= 0)
		f->enabled = e->enabled;
	if (e->kill >= 0)
		f->kill = e->kill;
	if (e->percent >= 0)
		f->percent = e->percent;
	if (e->description) {
		free(f->description);
		f->description = xstrdup(e->description);
	}
	if (e->owner) {
		free(f->owner);
		f->owner = xstrdup(e->owner);
	}
	if (e->salt) {
		free(f->salt);
		f->salt = xstrdup(e->salt);
	}
	struct flag_idlist *lists[] = { NULL, &f->allow, &f->deny, &f->cohorts };
	struct flag_idlist *l = lists[e->list];
	size_t max = e->list == EDIT_LIST_COHORTS ? FLAG_COHORTS_MAX : FLAG_LIST_MAX;
	for (size_t i = 0; l && i < e->nids; i++) {
		if (e->remove)
			flag_idlist_remove(l, e->ids[i]);
		else
			flag_idlist_add(l, e->ids[i]);
	}
	if (l && l->n > max) {
		snprintf(err, errlen, "%s of flag '%s' would hold %zu entries; the limit is %zu",
			 edit_list_names[e->list], f->name, l->n, max);
		return STORE_INVALID;
	}
	return STORE_OK;
}

/*
 * Prints one applied change: "NAME: percent 10% -> 20% (version 7)", or
 * a JSON object with the flag as it now is. version -1: nothing changed.
 * With sb (kill, rollback), sync-back's state follows: a line of text
 * (none when sync-back is not in use), or the object's "syncback".
 */
static void print_change(struct ctl *ctl, const char *subject, const struct flag *before, const struct flag *after,
			 long long version, const struct ctl_syncback *sb)
{
	struct buf change, json;
	buf_init(&change);
	buf_init(&json);
	if (version < 0)
		buf_puts(&change, "no change");
	else
		flag_diff(before, after, &change);
	if (ctl->json) {
		buf_puts(&json, "{\"subject\":");
		json_put_string(&json, subject, strlen(subject));
		buf_printf(&json, ",\"version\":%lld,\"change\":", version);
		json_put_string(&json, change.data, change.len);
		if (after) {
			buf_puts(&json, ",\"flag\":");
			flag_encode(after, &json);
		}
		if (sb) {
			buf_puts(&json, ",\"syncback\":");
			ctl_syncback_json(sb, &json);
		}
		buf_puts(&json, "}\n");
	} else {
		if (version < 0)
			buf_printf(&json, "%s: no change\n", subject);
		else
			buf_printf(&json, "%s: %s (version %lld)\n", subject, change.data, version);
		if (sb)
			ctl_syncback_line(sb, &json);
		if (sb && json.data[json.len - 1] != '\n')
			buf_putc(&json, '\n');
	}
	fputs(json.data, stdout);
	buf_free(&change);
	buf_free(&json);
}

int ctl_print_change(struct ctl *ctl, const char *subject, const struct flag *before, const struct flag *after,
		     long long version)
{
	print_change(ctl, subject, before, after, version, NULL);
	return CTL_EXIT_OK;
}

int ctl_check_name(const char *what, const char *name)
{
	char why[FLAG_ERR_MAX];
	if (flag_name_check(name, why, sizeof(why)) == 0)
		return CTL_EXIT_OK;
	fprintf(stderr, "cutoverctl: invalid %s name '%s': %s\n", what, name, why);
	return CTL_EXIT_INVALID;
}

int ctl_check_ids(char **ids, size_t n)
{
	char why[FLAG_ERR_MAX];
	for (size_t i = 0; i < n; i++) {
		if (flag_user_id_check(ids[i], strlen(ids[i]), why, sizeof(why)) < 0) {
			/* Quoted as JSON: the id may hold control characters. */
			struct buf shown;
			buf_init(&shown);
			json_put_string(&shown, ids[i], strlen(ids[i]) > 80 ? 80 : strlen(ids[i]));
			fprintf(stderr, "cutoverctl: invalid user id %s%s: %s\n", shown.data,
				strlen(ids[i]) > 80 ? " (cut)" : "", why);
			buf_free(&shown);
			return CTL_EXIT_INVALID;
		}
	}
	return CTL_EXIT_OK;
}

/* The share of users a flag sends to the service: 0 when off. Lists and
 * cohorts aside, which are few by design. */
static int service_share(const struct flag *f)
{
	return f->enabled && !f->kill ? f->percent : 0;
}

/*
 * After a change to a flag named like "<x>read<y>" or "<x>write<y>",
 * compares it with its sibling and warns (on stderr) when the pair now
 * sends some users' writes to the service while their reads stay on
 * legacy: those users would not read their own writes until sync-back
 * caught up (README, "Which read/write flag combinations stay
 * consistent"). Silent when there is no sibling.
 */
static void warn_risky_pair(struct flag_store *st, const struct flag *changed)
{
	const char *name = changed->name;
	const char *at = strstr(name, "write");
	bool is_write = at != NULL;
	if (!is_write && (at = strstr(name, "read")) == NULL)
		return;
	char sibling[FLAG_NAME_MAX + 8];
	snprintf(sibling, sizeof(sibling), "%.*s%s%s", (int)(at - name), name, is_write ? "read" : "write",
		 at + (is_write ? 5 : 4));
	struct flag *other = NULL;
	char err[512];
	if (flag_store_get(st, sibling, &other, err, sizeof(err)) != STORE_OK)
		return;
	const struct flag *rd = is_write ? other : changed, *wr = is_write ? changed : other;
	int reads = service_share(rd), writes = service_share(wr);
	if (writes > 0 && (writes > reads || strcmp(rd->salt, wr->salt) != 0)) {
		char pr[16], pw[16];
		flag_percent_format(reads, pr, sizeof(pr));
		flag_percent_format(writes, pw, sizeof(pw));
		fprintf(stderr,
			"cutoverctl: warning: %s sends writes of %s of users to the service but %s sends only %s of reads "
			"there%s: some users will not read their own writes until sync-back catches up\n",
			wr->name, pw, rd->name, pr,
			strcmp(rd->salt, wr->salt) != 0 ? " (and their salts differ, so the rollouts do not nest)" : "");
	}
	flag_free(other);
}

/*
 * kill and rollback send users back to legacy, which knows of their
 * writes to the service only through sync-back: after the change, says
 * how far behind legacy may be and, with --wait-synced, waits until it
 * has every event up to the change.
 */
static int report_syncback(struct ctl *ctl, struct flag_store *st, const char *name, const struct flag_edit *e,
			   const struct flag *after, long long version)
{
	struct ctl_syncback sb;
	int rc = ctl_syncback_read(ctl, st, e->wait_synced, &sb);
	print_change(ctl, name, e->before, after, version, rc == CTL_EXIT_OK ? &sb : NULL);
	warn_risky_pair(st, after);
	if (rc == CTL_EXIT_OK && e->wait_synced)
		rc = ctl_syncback_wait(ctl, st, &sb, e->timeout_s > 0 ? e->timeout_s : SYNC_WAIT_DEFAULT_S);
	ctl_syncback_free(&sb);
	return rc;
}

static int run_edit(struct ctl *ctl, const char *name, const char *action, struct flag_edit *e)
{
	int rc = ctl_check_name("flag", name);
	if (rc != CTL_EXIT_OK)
		return rc;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	char err[512];
	struct flag *after = NULL;
	long long version;
	int status = flag_store_update(st, name, action, edit_apply, e, ctl->actor, &after, &version, err, sizeof(err));
	if (status == STORE_OK && e->syncback) {
		rc = report_syncback(ctl, st, name, e, after, version);
	} else if (status == STORE_OK) {
		rc = ctl_print_change(ctl, name, e->before, after, version);
		warn_risky_pair(st, after);
	} else {
		rc = ctl_fail(status, err);
	}
	flag_free(e->before);
	flag_free(after);
	return rc;
}

/* Verbs that take exactly one operand, a valid flag name. */
static int one_name(const struct ctl_verb *verb, int argc, char **argv, const char **name)
{
	if (argc != 2 || argv[1][0] == '-')
		return ctl_usage_error("flag", verb, "expected exactly one flag name");
	*name = argv[1];
	return ctl_check_name("flag", *name);
}

static int sync_option(int opt, const char *arg, void *state)
{
	struct flag_edit *e = state;
	if (opt == 'w') {
		e->wait_synced = true;
		return 0;
	}
	char *end;
	e->timeout_s = strtod(arg, &end);
	/* Written so that NaN fails too. */
	if (end == arg || *end != '\0' || !(e->timeout_s > 0 && e->timeout_s <= 86400)) {
		fprintf(stderr, "cutoverctl: invalid --timeout '%s': give seconds, more than 0 and at most 86400\n", arg);
		return CTL_EXIT_INVALID;
	}
	return 0;
}

static const struct option sync_options[] = {
	{ "wait-synced", no_argument, NULL, 'w' },
	{ "timeout", required_argument, NULL, 't' },
	{ NULL, 0, NULL, 0 },
};

/* enable, disable, kill, unkill and rollback: fixed values, one change.
 * kill and rollback also report on sync-back, and may wait for it. */
static int flag_switch(struct ctl *ctl, int argc, char **argv)
{
	static const struct {
		const char *verb;
		int enabled, kill, percent;
		bool syncback;
	} switches[] = {
		{ "enable", 1, -1, -1, false }, { "disable", 0, -1, -1, false }, { "kill", -1, 1, -1, true },
		{ "unkill", -1, 0, -1, false }, { "rollback", 0, -1, 0, true },
	};
	size_t i = 0;
	while (strcmp(switches[i].verb, argv[0]) != 0)
		i++;
	const struct ctl_verb *verb = ctl_verb_named(ctl_flag_verbs, argv[0]);
	struct flag_edit e = EDIT_NONE;
	e.enabled = switches[i].enabled;
	e.kill = switches[i].kill;
	e.percent = switches[i].percent;
	e.syncback = switches[i].syncback;
	if (e.syncback) {
		int first = ctl_parse_options("flag", verb, argc, argv, "", sync_options, sync_option, &e);
		if (first < 0)
			return -first;
		if (e.timeout_s > 0 && !e.wait_synced)
			return ctl_usage_error("flag", verb, "--timeout goes with --wait-synced");
		argc -= first - 1;
		argv += first - 1;
	}
	const char *name = NULL;
	int rc = one_name(verb, argc, argv, &name);
	return rc != CTL_EXIT_OK ? rc : run_edit(ctl, name, switches[i].verb, &e);
}

static int set_option(int opt, const char *arg, void *state)
{
	struct flag_edit *e = state;
	char err[FLAG_ERR_MAX];
	switch (opt) {
	case 'p':
		if (flag_percent_parse(arg, &e->percent, err, sizeof(err)) < 0) {
			fprintf(stderr, "cutoverctl: %s\n", err);
			return CTL_EXIT_INVALID;
		}
		/* "--percent 10" is 0.1%: likely meant as 10%, so say it. */
		if (strchr(arg, '%') == NULL && e->percent > 0 && e->percent < 100) {
			char pct[16];
			flag_percent_format(e->percent, pct, sizeof(pct));
			fprintf(stderr, "cutoverctl: note: %s is basis points, i.e. %s; write %s%% for %s percent\n",
				arg, pct, arg, arg);
		}
		return 0;
	case 'd': e->description = arg; return 0;
	case 'o': e->owner = arg; return 0;
	case 's': e->salt = arg; return 0;
	}
	return CTL_EXIT_USAGE;
}

static const struct option describe_options[] = {
	{ "percent", required_argument, NULL, 'p' },
	{ "description", required_argument, NULL, 'd' },
	{ "owner", required_argument, NULL, 'o' },
	{ NULL, 0, NULL, 0 },
};

static const struct option create_options[] = {
	{ "description", required_argument, NULL, 'd' },
	{ "owner", required_argument, NULL, 'o' },
	{ "salt", required_argument, NULL, 's' },
	{ NULL, 0, NULL, 0 },
};

static int check_text(const char *what, const char *text, size_t max)
{
	if (text == NULL || (strlen(text) <= max && utf8_valid(text, strlen(text))))
		return CTL_EXIT_OK;
	fprintf(stderr, "cutoverctl: %s must be valid UTF-8 of at most %zu bytes\n", what, max);
	return CTL_EXIT_INVALID;
}

static int check_describe(const struct flag_edit *e)
{
	int rc = check_text("--description", e->description, FLAG_DESCRIPTION_MAX);
	if (rc == CTL_EXIT_OK)
		rc = check_text("--salt", e->salt, FLAG_SALT_MAX);
	return rc != CTL_EXIT_OK ? rc : check_text("--owner", e->owner, FLAG_OWNER_MAX);
}

static int flag_set(struct ctl *ctl, int argc, char **argv)
{
	const struct ctl_verb *verb = ctl_verb_named(ctl_flag_verbs, "set");
	struct flag_edit e = EDIT_NONE;
	int first = ctl_parse_options("flag", verb, argc, argv, "p:d:o:", describe_options, set_option, &e);
	if (first < 0)
		return -first;
	if (argc - first != 1)
		return ctl_usage_error("flag", verb, "expected exactly one flag name");
	if (e.percent < 0 && !e.description && !e.owner)
		return ctl_usage_error("flag", verb, "nothing to set: give --percent, --description or --owner");
	int rc = check_describe(&e);
	return rc != CTL_EXIT_OK ? rc : run_edit(ctl, argv[first], "set", &e);
}

static int flag_create(struct ctl *ctl, int argc, char **argv)
{
	const struct ctl_verb *verb = ctl_verb_named(ctl_flag_verbs, "create");
	struct flag_edit e = EDIT_NONE;
	int first = ctl_parse_options("flag", verb, argc, argv, "d:o:s:", create_options, set_option, &e);
	if (first < 0)
		return -first;
	if (argc - first != 1)
		return ctl_usage_error("flag", verb, "expected exactly one flag name");
	const char *name = argv[first];
	int rc = ctl_check_name("flag", name);
	if (rc == CTL_EXIT_OK)
		rc = check_describe(&e);
	if (rc != CTL_EXIT_OK)
		return rc;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	struct flag *f = flag_new(name);
	char err[512];
	if (edit_apply(f, &e, err, sizeof(err)) != STORE_OK)
		abort(); /* no list edit, cannot fail */
	long long version;
	int status = flag_store_create(st, f, ctl->actor, &version, err, sizeof(err));
	rc = status == STORE_OK ? ctl_print_change(ctl, name, NULL, f, version) : ctl_fail(status, err);
	flag_free(e.before);
	flag_free(f);
	return rc;
}

static int flag_delete(struct ctl *ctl, int argc, char **argv)
{
	const char *name = NULL;
	int rc = one_name(ctl_verb_named(ctl_flag_verbs, "delete"), argc, argv, &name);
	if (rc != CTL_EXIT_OK)
		return rc;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	char err[512];
	long long version;
	int status = flag_store_delete(st, name, ctl->actor, &version, err, sizeof(err));
	if (status != STORE_OK)
		return ctl_fail(status, err);
	struct flag *gone = flag_new(name);
	rc = ctl_print_change(ctl, name, gone, NULL, version);
	flag_free(gone);
	return rc;
}

static int list_option(int opt, const char *arg, void *state)
{
	(void)arg;
	*(bool *)state = opt == 'r';
	return 0;
}

static const struct option list_edit_options[] = {
	{ "remove", no_argument, NULL, 'r' },
	{ NULL, 0, NULL, 0 },
};

/* allow / deny NAME [--remove] ID... */
static int flag_list_edit(struct ctl *ctl, int argc, char **argv, const char *verb_name, enum edit_list list)
{
	const struct ctl_verb *verb = ctl_verb_named(ctl_flag_verbs, verb_name);
	struct flag_edit e = EDIT_NONE;
	int first = ctl_parse_options("flag", verb, argc, argv, "r", list_edit_options, list_option, &e.remove);
	if (first < 0)
		return -first;
	if (argc - first < 2)
		return ctl_usage_error("flag", verb, "expected a flag name and at least one user id");
	e.list = list;
	e.ids = argv + first + 1;
	e.nids = (size_t)(argc - first - 1);
	int rc = ctl_check_ids(e.ids, e.nids);
	return rc != CTL_EXIT_OK ? rc : run_edit(ctl, argv[first], e.remove ? "unlist" : verb->name, &e);
}

static int flag_allow(struct ctl *ctl, int argc, char **argv)
{
	return flag_list_edit(ctl, argc, argv, "allow", EDIT_LIST_ALLOW);
}

static int flag_deny(struct ctl *ctl, int argc, char **argv)
{
	return flag_list_edit(ctl, argc, argv, "deny", EDIT_LIST_DENY);
}

static void print_idlist(const char *label, const struct flag_idlist *l)
{
	printf("%-12s ", label);
	if (l->n == 0)
		printf("-");
	for (size_t i = 0; i < l->n; i++)
		printf("%s%s", i ? ", " : "", l->items[i]);
	printf("\n");
}

static int flag_get(struct ctl *ctl, int argc, char **argv)
{
	const char *name = NULL;
	int rc = one_name(ctl_verb_named(ctl_flag_verbs, "get"), argc, argv, &name);
	if (rc != CTL_EXIT_OK)
		return rc;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	struct flag *f;
	char err[512];
	int status = flag_store_get(st, name, &f, err, sizeof(err));
	if (status != STORE_OK)
		return ctl_fail(status, err);
	if (ctl->json) {
		struct buf json;
		buf_init(&json);
		flag_encode(f, &json);
		printf("%s\n", json.data);
		buf_free(&json);
	} else {
		char pct[16];
		flag_percent_format(f->percent, pct, sizeof(pct));
		printf("%-12s %s\n%-12s %s\n%-12s %s\n%-12s %s (%d basis points)\n%-12s %s\n", "name", f->name,
		       "enabled", f->enabled ? "true" : "false", "kill", f->kill ? "true" : "false", "percent", pct,
		       f->percent, "salt", f->salt);
		print_idlist("allow", &f->allow);
		print_idlist("deny", &f->deny);
		print_idlist("cohorts", &f->cohorts);
		printf("%-12s %s\n%-12s %s\n", "description", f->description, "owner", f->owner);
	}
	flag_free(f);
	return CTL_EXIT_OK;
}

static int flag_list(struct ctl *ctl, int argc, char **argv)
{
	if (argc != 1)
		return ctl_usage_error("flag", ctl_verb_named(ctl_flag_verbs, "list"), "takes no arguments");
	(void)argv;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	struct flag_snapshot *s;
	char err[512];
	int status = flag_store_load(st, &s, err, sizeof(err));
	if (status != STORE_OK)
		return ctl_fail(status, err);
	struct buf out;
	buf_init(&out);
	if (ctl->json) {
		buf_printf(&out, "{\"version\":%lld,\"flags\":[", s->version);
		for (size_t i = 0; i < s->nflags; i++) {
			if (i)
				buf_putc(&out, ',');
			flag_encode(s->flags[i], &out);
		}
		buf_puts(&out, "]}");
	} else {
		buf_printf(&out, "%-24s %-7s %-5s %8s  %s", "NAME", "ENABLED", "KILL", "PERCENT", "OWNER");
		for (size_t i = 0; i < s->nflags; i++) {
			const struct flag *f = s->flags[i];
			char pct[16];
			flag_percent_format(f->percent, pct, sizeof(pct));
			buf_printf(&out, "\n%-24s %-7s %-5s %8s  %s", f->name, f->enabled ? "yes" : "no",
				   f->kill ? "KILL" : "-", pct, f->owner);
		}
	}
	printf("%s\n", out.data);
	buf_free(&out);
	flag_snapshot_unref(s);
	return CTL_EXIT_OK;
}

struct history_print {
	struct ctl *ctl;
	size_t printed;
};

static struct flag *decode_or_null(const char *json)
{
	char err[FLAG_ERR_MAX];
	return *json ? flag_decode(json, strlen(json), err, sizeof(err)) : NULL;
}

static void history_entry(const struct audit_entry *e, void *arg)
{
	struct history_print *hp = arg;
	struct flag *old = decode_or_null(e->old_json), *cur = decode_or_null(e->new_json);
	struct buf change, line;
	buf_init(&change);
	buf_init(&line);
	flag_diff(old, cur, &change);
	char when[32];
	format_utc_ms(e->time_ms, when, sizeof(when));
	if (hp->ctl->json) {
		buf_printf(&line, "%s{\"time\":\"%s\",\"version\":%lld,\"actor\":", hp->printed ? "," : "[", when,
			   e->version);
		json_put_string(&line, e->actor, strlen(e->actor));
		buf_puts(&line, ",\"action\":");
		json_put_string(&line, e->action, strlen(e->action));
		buf_puts(&line, ",\"change\":");
		json_put_string(&line, change.data, change.len);
		buf_puts(&line, ",\"old\":");
		buf_puts(&line, *e->old_json ? e->old_json : "null");
		buf_puts(&line, ",\"new\":");
		buf_puts(&line, *e->new_json ? e->new_json : "null");
		buf_putc(&line, '}');
		printf("%s", line.data);
	} else {
		printf("%s  v%-6lld %-12s %-10s %s\n", when, e->version, e->actor, e->action, change.data);
	}
	hp->printed++;
	flag_free(old);
	flag_free(cur);
	buf_free(&change);
	buf_free(&line);
}

static int limit_option(int opt, const char *arg, void *state)
{
	(void)opt;
	char *end;
	long v = strtol(arg, &end, 10);
	if (*end != '\0' || v < 1 || v > 100000) {
		fprintf(stderr, "cutoverctl: invalid --limit '%s': give 1..100000\n", arg);
		return CTL_EXIT_INVALID;
	}
	*(size_t *)state = (size_t)v;
	return 0;
}

static int flag_history(struct ctl *ctl, int argc, char **argv)
{
	const struct ctl_verb *verb = ctl_verb_named(ctl_flag_verbs, "history");
	static const struct option opts[] = { { "limit", required_argument, NULL, 'n' }, { NULL, 0, NULL, 0 } };
	size_t limit = 20;
	int first = ctl_parse_options("flag", verb, argc, argv, "n:", opts, limit_option, &limit);
	if (first < 0)
		return -first;
	if (argc - first != 1)
		return ctl_usage_error("flag", verb, "expected exactly one flag name");
	int rc = ctl_check_name("flag", argv[first]);
	if (rc != CTL_EXIT_OK)
		return rc;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	struct history_print hp = { ctl, 0 };
	char err[512];
	int status = flag_store_history(st, argv[first], limit, history_entry, &hp, err, sizeof(err));
	if (status != STORE_OK)
		return ctl_fail(status, err);
	if (hp.printed == 0) {
		/* A deleted flag keeps its history; one never created has none. */
		struct flag *f = NULL;
		status = flag_store_get(st, argv[first], &f, err, sizeof(err));
		flag_free(f);
		if (status == STORE_NOT_FOUND)
			return ctl_fail(status, err);
	}
	if (ctl->json)
		printf("%s\n", hp.printed ? "]" : "[]");
	else if (hp.printed == 0)
		printf("no history for '%s'\n", argv[first]);
	return CTL_EXIT_OK;
}

static int flag_eval_verb(struct ctl *ctl, int argc, char **argv)
{
	const struct ctl_verb *verb = ctl_verb_named(ctl_flag_verbs, "eval");
	int rc = ctl_operands("flag", verb, &argc, &argv);
	if (rc != CTL_EXIT_OK)
		return rc;
	if (argc < 3)
		return ctl_usage_error("flag", verb, "expected a flag name and user ids");
	rc = ctl_check_name("flag", argv[1]);
	if (rc == CTL_EXIT_OK)
		rc = ctl_check_ids(argv + 2, (size_t)argc - 2);
	if (rc != CTL_EXIT_OK)
		return rc;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	struct flag_snapshot *s;
	char err[512];
	int status = flag_store_load(st, &s, err, sizeof(err));
	if (status != STORE_OK)
		return ctl_fail(status, err);
	const struct flag *f = flag_snapshot_find(s, argv[1]);
	if (f == NULL) {
		flag_snapshot_unref(s);
		snprintf(err, sizeof(err), "no such flag '%s'", argv[1]);
		return ctl_fail(STORE_NOT_FOUND, err);
	}
	struct buf line;
	buf_init(&line);
	for (int i = 2; i < argc; i++) {
		struct flag_decision d;
		flag_eval(f, argv[i], strlen(argv[i]), &d);
		buf_reset(&line);
		if (ctl->json) {
			buf_puts(&line, "{\"flag\":");
			json_put_string(&line, f->name, strlen(f->name));
			buf_puts(&line, ",\"user\":");
			json_put_string(&line, argv[i], strlen(argv[i]));
			buf_printf(&line, ",\"on\":%s,\"reason\":\"%s\",\"bucket\":%d", d.on ? "true" : "false",
				   flag_reason_name(d.reason), d.bucket);
			if (d.cohort)
				buf_printf(&line, ",\"cohort\":\"%s\"", d.cohort);
			buf_putc(&line, '}');
		} else {
			buf_printf(&line, "%s %s: %s (reason %s%s%s, bucket %d)", f->name, argv[i], d.on ? "on" : "off",
				   flag_reason_name(d.reason), d.cohort ? " " : "", d.cohort ? d.cohort : "", d.bucket);
		}
		printf("%s\n", line.data);
	}
	buf_free(&line);
	flag_snapshot_unref(s);
	return CTL_EXIT_OK;
}

/* flag cohort add|remove NAME COHORT...  |  flag cohort list NAME */
static int flag_cohort(struct ctl *ctl, int argc, char **argv)
{
	const struct ctl_verb *verb = ctl_verb_named(ctl_flag_verbs, "cohort");
	int rc = ctl_operands("flag", verb, &argc, &argv);
	if (rc != CTL_EXIT_OK)
		return rc;
	bool list = argc == 3 && strcmp(argv[1], "list") == 0;
	bool add = argc >= 4 && strcmp(argv[1], "add") == 0;
	if (!list && !add && !(argc >= 4 && strcmp(argv[1], "remove") == 0))
		return ctl_usage_error("flag", verb, "expected add|remove NAME COHORT... or list NAME");
	rc = ctl_check_name("flag", argv[2]);
	for (int i = 3; i < argc && rc == CTL_EXIT_OK; i++)
		rc = ctl_check_name("cohort", argv[i]);
	if (rc != CTL_EXIT_OK)
		return rc;
	if (!list) {
		struct flag_edit e = EDIT_NONE;
		e.list = EDIT_LIST_COHORTS;
		e.remove = !add;
		e.ids = argv + 3;
		e.nids = (size_t)argc - 3;
		return run_edit(ctl, argv[2], add ? "cohort-add" : "cohort-remove", &e);
	}
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	struct flag_snapshot *s;
	char err[512];
	int status = flag_store_load(st, &s, err, sizeof(err));
	if (status != STORE_OK)
		return ctl_fail(status, err);
	const struct flag *f = flag_snapshot_find(s, argv[2]);
	if (f == NULL) {
		snprintf(err, sizeof(err), "no such flag '%s'", argv[2]);
		rc = ctl_fail(STORE_NOT_FOUND, err);
	}
	for (size_t i = 0; f && i < f->cohorts.n; i++) {
		const struct cohort *c = flag_snapshot_cohort(s, f->cohorts.items[i]);
		size_t members = c ? c->members.n : 0;
		if (ctl->json)
			printf("%s{\"cohort\":\"%s\",\"members\":%zu}", i ? "," : "[", f->cohorts.items[i], members);
		else
			printf("%-24s %zu members\n", f->cohorts.items[i], members);
	}
	if (f && ctl->json)
		printf("%s\n", f->cohorts.n ? "]" : "[]");
	flag_snapshot_unref(s);
	return rc;
}

/* kill and rollback: what they say about sync-back. */
#define SYNC_HELP \
	"Then says how far legacy may be behind the users service: the events of its\n" \
	"stream (--events) that the \"syncback\" group has pending or not yet read, the\n" \
	"age of the oldest, and how many sync-back dead-lettered (never in legacy).\n" \
	"  --wait-synced   then wait until sync-back has applied every event up to the\n" \
	"                  change; exit 5 on a timeout or when there is no sync-back,\n" \
	"                  6 when events were dead-lettered meanwhile\n" \
	"  --timeout S     stop waiting after S seconds (default 60)\n"

const struct ctl_verb ctl_flag_verbs[] = {
	{ "list", "", "list all flags", NULL, flag_list },
	{ "get", "NAME", "show one flag", NULL, flag_get },
	{ "create", "NAME [--description T] [--owner O] [--salt S]",
			  "create a flag: disabled, at 0%, salted with its name",
			  "  --description T   what the flag switches (UTF-8, 1024 bytes at most)\n"
			  "  --owner O         who to ask about it (UTF-8, 128 bytes at most)\n"
			  "  --salt S          bucket users with S instead of the name: give a read flag\n"
			  "                    and its write flag the same salt so one rollout nests in\n"
			  "                    the other (64 bytes at most; fixed once created)\n"
			  "Names are 1-64 bytes of letters, digits, '.', '_' and '-'.\n",
			  flag_create },
	{ "delete", "NAME", "delete a flag (its users go to legacy)", NULL, flag_delete },
	{ "set", "NAME [--percent P] [--description T] [--owner O]", "change a flag's rollout or labels",
		       "  --percent P   share of users in: a percentage (\"12.5%\", two decimals at most)\n"
		       "                or basis points (\"1250\"); raising it keeps everyone already in\n",
		       flag_set },
	{ "enable", "NAME", "turn the flag's rollout on", NULL, flag_switch },
	{ "disable", "NAME", "turn the flag off for everyone (keeps its settings)", NULL,
			   flag_switch },
	{ "kill", "NAME [--wait-synced [--timeout S]]", "emergency off: overrides everything until unkill", SYNC_HELP,
	  flag_switch },
	{ "unkill", "NAME", "lift the kill switch; the rollout resumes as it was", NULL, flag_switch },
	{ "rollback", "NAME [--wait-synced [--timeout S]]", "percent 0 and disabled, in one change", SYNC_HELP,
	  flag_switch },
	{ "allow", "NAME [--remove] ID...", "always on for these users (unless denied)",
			 "  --remove   take the ids off the allow list instead\n", flag_allow },
	{ "deny", "NAME [--remove] ID...", "always off for these users",
			"  --remove   take the ids off the deny list instead\n", flag_deny },
	{ "cohort", "add|remove|list NAME [COHORT...]", "attach named cohorts to a flag",
			  "  add NAME COHORT...      the cohorts' members are on (after deny and allow)\n"
			  "  remove NAME COHORT...   detach cohorts\n"
			  "  list NAME               the flag's cohorts and their sizes\n"
			  "Members are managed with 'cutoverctl cohort add|remove'.\n",
			  flag_cohort },
	{ "history", "NAME [--limit N]", "changes from the audit stream: time, actor, old -> new",
			   "  --limit N   show the last N changes (default 20)\n", flag_history },
	{ "eval", "NAME USER_ID...", "decision, reason and bucket for users", NULL, flag_eval_verb },
	{ "watch", "", "print each change as it happens (Ctrl-C to stop)",
			 "Prints the snapshot loaded at start, then one line per changed flag or\n"
			 "cohort, and the connection state when Redis goes away or comes back.\n",
			 ctl_flag_watch },
	{ NULL, NULL, NULL, NULL, NULL },
};
