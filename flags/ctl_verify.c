/*
 * ctl_verify.c - `cutoverctl migration verify`: compares migrated users
 * field by field between legacy and the service and reports the drift.
 *
 * The users are those of <prefix>:migrated (a random sample, or all of
 * them through HSCAN) or the ids given. They go through in batches of
 * VERIFY_BATCH: one $in find in legacy, the mapping, the service's
 * copies (one find, or a GET each), the comparison (migrator/verify.c),
 * and one output line per drifting field or user, printed as found; so
 * memory holds one batch whatever the number of users.
 *
 * The migrator's configuration file says where everything is. Its Redis
 * URL and prefix are used unless --redis or --prefix is on cutoverctl's
 * command line: the file names the Redis the workers record into, which
 * the environment defaults ($CUTOVER_REDIS_URL, $CUTOVER_PREFIX) of every
 * other verb need not be.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "flags/ctl.h"
#include "migrator/migrator.h"

#define VERIFY_CONFIG_DEFAULT "/etc/cutover/migrate.conf"
#define VERIFY_SAMPLE_DEFAULT 100
#define VERIFY_SAMPLE_MAX 100000
#define VERIFY_BATCH 500     /* users a find, and an HSCAN's COUNT */
#define VALUE_SHOWN_MAX 200  /* bytes of a value in a text line */

struct verify_options {
	const char *config;
	int sample;
	bool sample_given;
	bool all;
};

/* One run: what is compared with what, the batch being filled, and the
 * counts so far. */
struct verify_run {
	struct ctl *ctl;
	const struct migrate_config *cfg;
	struct legacy *legacy;
	struct verify_service *service;
	char *users[VERIFY_BATCH]; /* owned */
	size_t nusers;
	long long verified, drifted, fields, not_in_service, not_in_legacy, gone;
	bool printed; /* --json: an entry is out, the next needs a comma */
};

/* ---- output ------------------------------------------------------------- */

/* Appends a JSON value of the report to a text line, cut after
 * VALUE_SHOWN_MAX bytes (at a character boundary). */
static void put_value(struct buf *line, const char *json)
{
	size_t len = strlen(json);
	if (len <= VALUE_SHOWN_MAX) {
		buf_puts(line, json);
		return;
	}
	while (len > VALUE_SHOWN_MAX || (len > 0 && ((unsigned char)json[len] & 0xc0) == 0x80))
		len--;
	buf_append(line, json, len);
	buf_puts(line, "...");
}

/* Starts a JSON entry for user: `{"user":...,"kind":...`. */
static void json_entry_start(struct verify_run *run, struct buf *line, const char *user, const char *kind)
{
	buf_puts(line, run->printed ? ",\n{\"user\":" : "\n{\"user\":");
	json_put_string(line, user, strlen(user));
	buf_printf(line, ",\"kind\":\"%s\"", kind);
	run->printed = true;
}

static void print_field(struct verify_run *run, const char *user, const struct verify_field *f)
{
	static const char *const kinds[] = { [VERIFY_DIFFERS] = "differs", [VERIFY_MISSING] = "missing",
					     [VERIFY_EXTRA] = "extra" };
	struct buf line;
	buf_init(&line);
	if (run->ctl->json) {
		json_entry_start(run, &line, user, kinds[f->kind]);
		buf_puts(&line, ",\"field\":");
		json_put_string(&line, f->name, strlen(f->name));
		if (f->legacy)
			buf_printf(&line, ",\"legacy\":%s", f->legacy);
		if (f->service)
			buf_printf(&line, ",\"service\":%s", f->service);
		buf_putc(&line, '}');
		fputs(line.data, stdout);
	} else {
		buf_printf(&line, "drift %s %s: ", user, f->name);
		if (f->kind == VERIFY_DIFFERS) {
			buf_puts(&line, "legacy ");
			put_value(&line, f->legacy);
			buf_puts(&line, " service ");
			put_value(&line, f->service);
		} else {
			buf_puts(&line, f->kind == VERIFY_MISSING ? "missing in the service (legacy " : "extra in the service (");
			put_value(&line, f->legacy ? f->legacy : f->service);
			buf_putc(&line, ')');
		}
		printf("%s\n", line.data);
	}
	buf_free(&line);
}

/* A drift of the whole user: kind for --json, what for the text line,
 * why (or NULL) after it. */
static void print_user(struct verify_run *run, const char *user, const char *kind, const char *what,
		       const char *why)
{
	struct buf line;
	buf_init(&line);
	if (run->ctl->json) {
		json_entry_start(run, &line, user, kind);
		if (why) {
			buf_puts(&line, ",\"error\":");
			json_put_string(&line, why, strlen(why));
		}
		buf_putc(&line, '}');
		fputs(line.data, stdout);
	} else {
		printf("drift %s: %s%s%s\n", user, what, why ? ": " : "", why ? why : "");
	}
	buf_free(&line);
}

/* The summary: a line, or the end of the JSON document (complete: false
 * after an error, whose message went to stderr). */
static void print_summary(const struct verify_run *run, bool complete)
{
	long long missing = run->not_in_service + run->not_in_legacy;
	if (run->ctl->json) {
		printf("%s],\"complete\":%s,\"verified\":%lld,\"with_drift\":%lld,\"fields\":%lld,"
		       "\"missing_in_service\":%lld,\"missing_in_legacy\":%lld,\"absent_both\":%lld}\n",
		       run->printed ? "\n" : "", complete ? "true" : "false", run->verified, run->drifted, run->fields,
		       run->not_in_service, run->not_in_legacy, run->gone);
		return;
	}
	if (!complete)
		return;
	printf("verified %lld user%s: %lld with drift (%lld field%s), %lld missing", run->verified,
	       run->verified == 1 ? "" : "s", run->drifted, run->fields, run->fields == 1 ? "" : "s", missing);
	if (missing > 0)
		printf(" (%lld in the service, %lld in legacy)", run->not_in_service, run->not_in_legacy);
	if (run->gone > 0)
		printf(", %lld absent from both", run->gone);
	printf("\n");
}

/* ---- batches ------------------------------------------------------------ */

/* Compares one user and prints what differs. */
static void report_user(struct verify_run *run, const char *user, const bson_t *legacy, const bson_t *service)
{
	const struct migrate_config *cfg = run->cfg;
	struct verify_report r;
	verify_user(&cfg->mapping, cfg->verify_ignore, cfg->nverify_ignore, legacy, service, &r);
	run->verified++;
	switch (r.outcome) {
	case VERIFY_SAME: break;
	case VERIFY_GONE: run->gone++; break;
	case VERIFY_DRIFT:
		run->drifted++;
		run->fields += (long long)r.nfields;
		for (size_t i = 0; i < r.nfields; i++)
			print_field(run, user, &r.fields[i]);
		break;
	case VERIFY_NOT_IN_SERVICE:
		run->not_in_service++;
		print_user(run, user, "missing-in-service", "missing in the service", NULL);
		break;
	case VERIFY_NOT_IN_LEGACY:
		run->not_in_legacy++;
		print_user(run, user, "missing-in-legacy", "missing in legacy", NULL);
		break;
	case VERIFY_UNMAPPABLE:
		run->drifted++;
		print_user(run, user, "unmappable", "the mapping refuses the legacy document", r.why);
		break;
	}
	verify_report_free(&r);
}

/* Prints that one side could not be read; returns the exit code. */
static int unreachable(const char *side, const char *err)
{
	fprintf(stderr, "cutoverctl: %s: %s\n", side, err);
	return CTL_EXIT_UNREACHABLE;
}

/* Verifies the users of the batch and empties it. Returns 0, or the
 * exit code after a side could not be read. */
static int run_flush(struct verify_run *run)
{
	size_t n = run->nusers;
	char err[MIGRATE_ERR_MAX];
	int rc = CTL_EXIT_OK;
	if (n == 0)
		return rc;
	struct delivery **items = xcalloc(n, sizeof(*items));
	bson_t **service = xcalloc(n, sizeof(*service));
	for (size_t i = 0; i < n; i++) {
		items[i] = xcalloc(1, sizeof(**items));
		items[i]->user = run->users[i];
		run->users[i] = NULL;
	}
	run->nusers = 0;
	if (legacy_load(run->legacy, items, n, err, sizeof(err)) < 0)
		rc = unreachable("legacy MongoDB", err);
	else if (verify_service_load(run->service, items, n, service, err, sizeof(err)) < 0)
		rc = unreachable("the service", err);
	for (size_t i = 0; i < n; i++) {
		if (rc == CTL_EXIT_OK)
			report_user(run, items[i]->user, items[i]->legacy, service[i]);
		if (service[i])
			bson_destroy(service[i]);
		delivery_free(items[i]);
	}
	free(service);
	free(items);
	return rc;
}

/* Adds user to the batch (once), verifying the batch once it is full.
 * Returns 0 or an exit code. */
static int run_add(struct verify_run *run, const char *user)
{
	for (size_t i = 0; i < run->nusers; i++)
		if (strcmp(run->users[i], user) == 0)
			return CTL_EXIT_OK;
	run->users[run->nusers++] = xstrdup(user);
	return run->nusers == VERIFY_BATCH ? run_flush(run) : CTL_EXIT_OK;
}

/* Adds the user ids of a Redis array reply (step 2: HSCAN's field,
 * value pairs). */
static int add_reply_ids(struct verify_run *run, const redisReply *r, size_t step)
{
	int rc = CTL_EXIT_OK;
	for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements && rc == CTL_EXIT_OK; i += step)
		if (r->element[i]->type == REDIS_REPLY_STRING)
			rc = run_add(run, r->element[i]->str);
	return rc;
}

/* The users of <prefix>:migrated: a sample of n (HRANDFIELD), or all
 * of them (HSCAN, VERIFY_BATCH at a time; a user may come twice while
 * Redis resizes the hash, never not at all). */
static int verify_migrated(struct verify_run *run, const struct verify_options *o)
{
	struct ctl *ctl = run->ctl;
	if (!ctl->redis_given)
		ctl->redis_url = run->cfg->redis_url;
	if (!ctl->prefix_given)
		ctl->prefix = run->cfg->redis_prefix;
	struct flag_store *st = ctl_store(ctl);
	if (st == NULL)
		return CTL_EXIT_UNREACHABLE;
	const char *p = flag_store_prefix(st);
	int rc = CTL_EXIT_OK;
	if (!o->all) {
		redisReply *r = ctl_command(st, &rc, "HRANDFIELD %s:migrated %d", p, o->sample);
		if (r == NULL)
			return rc;
		rc = add_reply_ids(run, r, 1);
		freeReplyObject(r);
		return rc;
	}
	char cursor[32] = "0";
	do {
		redisReply *r = ctl_command(st, &rc, "HSCAN %s:migrated %s COUNT %d", p, cursor, VERIFY_BATCH);
		if (r == NULL)
			return rc;
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING) {
			freeReplyObject(r);
			fprintf(stderr, "cutoverctl: unexpected HSCAN reply from Redis\n");
			return CTL_EXIT_INVALID;
		}
		snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
		rc = add_reply_ids(run, r->element[1], 2);
		freeReplyObject(r);
	} while (rc == CTL_EXIT_OK && strcmp(cursor, "0") != 0);
	return rc;
}

/* Loads the configuration, opens both sides and verifies the users:
 * ids when n > 0, else those of <prefix>:migrated. */
static int verify_run(struct ctl *ctl, const struct verify_options *o, char **ids, int n)
{
	struct migrate_config *cfg;
	char err[MIGRATE_ERR_MAX];
	if (migrate_config_load(o->config, &cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "cutoverctl: %s\n", err);
		return CTL_EXIT_INVALID;
	}
	struct verify_run run = { .ctl = ctl, .cfg = cfg };
	const char *redis_url = ctl->redis_url, *prefix = ctl->prefix;
	int rc = CTL_EXIT_OK;
	if ((run.legacy = legacy_open(cfg, err, sizeof(err))) == NULL ||
	    (run.service = verify_service_open(cfg, err, sizeof(err))) == NULL) {
		fprintf(stderr, "cutoverctl: %s\n", err);
		rc = CTL_EXIT_INVALID;
		goto out;
	}
	if (ctl->json)
		printf("{\"drift\":[");
	for (int i = 0; i < n && rc == CTL_EXIT_OK; i++)
		rc = run_add(&run, ids[i]);
	if (n == 0)
		rc = verify_migrated(&run, o);
	if (rc == CTL_EXIT_OK)
		rc = run_flush(&run);
	print_summary(&run, rc == CTL_EXIT_OK);
	if (rc == CTL_EXIT_OK && run.drifted + run.not_in_service + run.not_in_legacy > 0)
		rc = CTL_EXIT_DRIFT;
out:
	for (size_t i = 0; i < run.nusers; i++)
		free(run.users[i]);
	verify_service_close(run.service);
	legacy_close(run.legacy);
	/* ctl may have borrowed the file's URL and prefix: the store has
	 * copies, ctl gets its own back. */
	ctl->redis_url = redis_url;
	ctl->prefix = prefix;
	migrate_config_free(cfg);
	return rc;
}

/* ---- the verb ------------------------------------------------------------ */

enum { OPT_SAMPLE = 256, OPT_ALL };

static int verify_option(int opt, const char *arg, void *state)
{
	struct verify_options *o = state;
	switch (opt) {
	case 'c': o->config = arg; break;
	case OPT_ALL: o->all = true; break;
	case OPT_SAMPLE:
		if (parse_decimal(arg, strlen(arg), 1, VERIFY_SAMPLE_MAX, &o->sample) < 0) {
			fprintf(stderr, "cutoverctl: invalid --sample '%s': give 1..%d\n", arg, VERIFY_SAMPLE_MAX);
			return CTL_EXIT_INVALID;
		}
		o->sample_given = true;
		break;
	}
	return 0;
}

/* migration verify [-c FILE] [--sample N | --all | ID...] */
int migration_verify(struct ctl *ctl, int argc, char **argv)
{
	static const struct option options[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "sample", required_argument, NULL, OPT_SAMPLE },
		{ "all", no_argument, NULL, OPT_ALL },
		{ NULL, 0, NULL, 0 },
	};
	const struct ctl_verb *verb = ctl_verb_named(ctl_migration_verbs, "verify");
	struct verify_options o = { .config = VERIFY_CONFIG_DEFAULT, .sample = VERIFY_SAMPLE_DEFAULT };
	int first = ctl_parse_options("migration", verb, argc, argv, "c:", options, verify_option, &o);
	if (first < 0)
		return -first;
	int n = argc - first;
	if ((n > 0) + o.sample_given + o.all > 1)
		return ctl_usage_error("migration", verb, "give one of --sample N, --all or user ids");
	int rc = ctl_check_ids(argv + first, (size_t)n);
	if (rc != CTL_EXIT_OK)
		return rc;
	mongoc_init();
	mongo_log_to_ours();
	rc = verify_run(ctl, &o, argv + first, n);
	mongoc_cleanup();
	return rc;
}
