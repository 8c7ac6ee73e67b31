/*
 * config.c - cutover-migrate's configuration file (conf/migrate.conf, in
 * libconfuse syntax), checked as a whole into a struct migrate_config.
 * Loading, line tracking and "FILE:LINE: reason" errors are common/conf.c;
 * this file holds the options and what each value must be.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/conf.h"
#include "migrator/migrator.h"

#define WHY_MAX 256
#define BLOCK_MAX 60000
#define CLAIM_IDLE_MIN 1000
#define CLAIM_IDLE_MAX 86400000 /* a day */
#define ATTEMPTS_MAX 1000
#define CONSUMER_MAX 128
#define NAME_MAX_BYTES 120 /* database and collection names */

static cfg_opt_t legacy_opts[] = {
	CFG_STR("uri", NULL, CFGF_NONE),
	CFG_STR("database", NULL, CFGF_NONE),
	CFG_STR("collection", "users", CFGF_NONE),
	CFG_STR("id_type", "string", CFGF_NONE),
	CFG_END(),
};

static cfg_opt_t sink_opts[] = {
	CFG_STR("type", NULL, CFGF_NONE),
	CFG_STR("url", NULL, CFGF_NONE),
	CFG_STR("uri", NULL, CFGF_NONE),
	CFG_STR("database", NULL, CFGF_NONE),
	CFG_STR("collection", "users", CFGF_NONE),
	CFG_INT_CB("timeout", 5000, CFGF_NONE, conf_plain_decimal),
	CFG_END(),
};

static cfg_opt_t mapping_opts[] = {
	CFG_STR_LIST("keep", NULL, CFGF_NONE),
	CFG_STR_LIST("drop", NULL, CFGF_NONE),
	CFG_STR_LIST("rename", NULL, CFGF_NONE),
	CFG_STR_LIST("default", NULL, CFGF_NONE),
	CFG_END(),
};

static cfg_opt_t retry_opts[] = {
	CFG_INT_CB("attempts", 5, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("backoff", 200, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("backoff_max", 30000, CFGF_NONE, conf_plain_decimal),
	CFG_END(),
};

static cfg_opt_t verify_opts[] = {
	CFG_STR("url", NULL, CFGF_NONE),
	CFG_STR_LIST("ignore", NULL, CFGF_NONE),
	CFG_END(),
};

static cfg_opt_t syncback_opts[] = {
	CFG_STR("stream", NULL, CFGF_NONE),
	CFG_STR("deletes", "tombstone", CFGF_NONE),
	CFG_STR("tombstone_field", "deleted", CFGF_NONE),
	CFG_STR("state_field", "_cutover", CFGF_NONE),
	CFG_STR("write_concern", "majority", CFGF_NONE),
	CFG_INT_CB("timeout", 5000, CFGF_NONE, conf_plain_decimal),
	CFG_STR("metrics_file", NULL, CFGF_NONE),
	CFG_SEC("mapping", mapping_opts, CFGF_NONE),
	CFG_END(),
};

static cfg_opt_t root_opts[] = {
	CFG_SEC("redis", conf_redis_opts, CFGF_NONE),
	CFG_SEC("legacy", legacy_opts, CFGF_NONE),
	CFG_SEC("sink", sink_opts, CFGF_NONE),
	CFG_STR("version_field", NULL, CFGF_NONE),
	CFG_SEC("mapping", mapping_opts, CFGF_NONE),
	CFG_INT_CB("batch", 100, CFGF_NONE, conf_plain_decimal),
	CFG_INT_CB("block", 1000, CFGF_NONE, conf_plain_decimal),
	CFG_STR("consumer", NULL, CFGF_NONE),
	CFG_SEC("retry", retry_opts, CFGF_NONE),
	CFG_INT_CB("claim_idle", 60000, CFGF_NONE, conf_plain_decimal),
	CFG_STR("metrics_file", NULL, CFGF_NONE),
	CFG_STR("log_level", "info", CFGF_NONE),
	CFG_SEC("verify", verify_opts, CFGF_NONE),
	CFG_SEC("syncback", syncback_opts, CFGF_NONE),
	CFG_END(),
};

static const char *const sink_type_names[] = { [SINK_HTTP] = "http", [SINK_MONGO] = "mongo" };

/* "http" or "mongo": how the file and the logs name a sink type. */
const char *sink_type_name(enum sink_type type)
{
	return sink_type_names[type];
}

/* Whether the file set option name of sec (rather than leaving its
 * default). */
static bool is_set(cfg_t *sec, const char *name)
{
	return (cfg_getopt(sec, name)->flags & CFGF_MODIFIED) != 0;
}

/* Reads a required string option of sec into *out (a new string). */
static int get_required(struct conf_loader *ld, cfg_t *sec, const char *name, char **out)
{
	const char *text = cfg_getstr(sec, name);
	if (text == NULL || text[0] == '\0')
		return conf_fail(ld, sec, NULL, "%s is required", name);
	*out = xstrdup(text);
	return 0;
}

/* A MongoDB database or collection name: 1 to 120 bytes without
 * characters MongoDB refuses in either ('/', '\\', '.', '"', '$', space:
 * stricter than it is for collections, simpler to explain). */
static int get_mongo_name(struct conf_loader *ld, cfg_t *sec, const char *name, char **out)
{
	if (get_required(ld, sec, name, out) < 0)
		return -1;
	size_t len = strlen(*out);
	if (len > NAME_MAX_BYTES || strpbrk(*out, "/\\. \"$") != NULL || !conf_all_of(*out, conf_is_visible))
		return conf_fail(ld, sec, name, "'%s' is not a usable name (1 to %d visible characters, none of /\\.\"$)",
				 *out, NAME_MAX_BYTES);
	return 0;
}

/* uri, database and collection of a legacy or mongo sink section. */
static int get_mongo_target(struct conf_loader *ld, cfg_t *sec, struct mongo_target *t)
{
	char why[WHY_MAX];
	if (get_required(ld, sec, "uri", &t->uri) < 0)
		return -1;
	if (mongo_uri_check(t->uri, why, sizeof(why)) < 0)
		return conf_fail(ld, sec, "uri", "%s", why);
	if (get_mongo_name(ld, sec, "database", &t->database) < 0 ||
	    get_mongo_name(ld, sec, "collection", &t->collection) < 0)
		return -1;
	return 0;
}

/* The legacy { } section. */
static int build_legacy(struct conf_loader *ld, cfg_t *sec, struct migrate_config *cfg)
{
	const char *id_type = cfg_getstr(sec, "id_type");
	if (get_mongo_target(ld, sec, &cfg->legacy) < 0)
		return -1;
	if (strcmp(id_type, "string") == 0)
		cfg->id_type = LEGACY_ID_STRING;
	else if (strcmp(id_type, "objectid") == 0)
		cfg->id_type = LEGACY_ID_OBJECTID;
	else
		return conf_fail(ld, sec, "id_type", "must be string or objectid, not '%s'", id_type);
	return 0;
}

/* Refuses the options of sec that belong to the other sink type. */
static int refuse_options(struct conf_loader *ld, cfg_t *sec, const char *const *names, size_t n,
			  const char *type)
{
	for (size_t i = 0; i < n; i++)
		if (is_set(sec, names[i]))
			return conf_fail(ld, sec, names[i], "is not an option of sink type %s", type);
	return 0;
}

/* The sink { } section: type http with url, or type mongo with uri,
 * database and collection; timeout for both. */
static int build_sink(struct conf_loader *ld, cfg_t *sec, struct migrate_config *cfg)
{
	static const char *const http_only[] = { "url" };
	static const char *const mongo_only[] = { "uri", "database", "collection" };
	const char *type = cfg_getstr(sec, "type");
	char why[WHY_MAX];
	if (type == NULL)
		return conf_fail(ld, sec, NULL, "type is required (http or mongo)");
	if (conf_get_int(ld, sec, "timeout", 1, CONF_DURATION_MAX, &cfg->sink_timeout_ms) < 0)
		return -1;
	if (strcmp(type, "http") == 0) {
		cfg->sink = SINK_HTTP;
		if (refuse_options(ld, sec, mongo_only, sizeof(mongo_only) / sizeof(mongo_only[0]), type) < 0 ||
		    get_required(ld, sec, "url", &cfg->sink_url) < 0)
			return -1;
		if (sink_http_check_url(cfg->sink_url, why, sizeof(why)) < 0)
			return conf_fail(ld, sec, "url", "%s", why);
		return 0;
	}
	if (strcmp(type, "mongo") == 0) {
		cfg->sink = SINK_MONGO;
		if (refuse_options(ld, sec, http_only, sizeof(http_only) / sizeof(http_only[0]), type) < 0)
			return -1;
		return get_mongo_target(ld, sec, &cfg->service);
	}
	return conf_fail(ld, sec, "type", "must be http or mongo, not '%s'", type);
}

/* Feeds each element of list option name of sec to add, in order. */
static int add_rules(struct conf_loader *ld, cfg_t *sec, const char *name, struct mapping *m,
		     int (*add)(struct mapping *, const char *, char *, size_t))
{
	char why[WHY_MAX];
	unsigned n = cfg_size(sec, name);
	for (unsigned i = 0; i < n; i++)
		if (add(m, cfg_getnstr(sec, name, i), why, sizeof(why)) < 0)
			return conf_fail(ld, sec, name, "%s", why);
	return 0;
}

/* The rules of a mapping { } section. */
static int build_rules(struct conf_loader *ld, cfg_t *sec, struct mapping *m)
{
	char why[WHY_MAX];
	if (add_rules(ld, sec, "keep", m, mapping_add_keep) < 0 || add_rules(ld, sec, "drop", m, mapping_add_drop) < 0 ||
	    add_rules(ld, sec, "rename", m, mapping_add_rename) < 0 ||
	    add_rules(ld, sec, "default", m, mapping_add_default) < 0)
		return -1;
	if (mapping_finish(m, why, sizeof(why)) < 0)
		return conf_fail(ld, sec, "rename", "%s", why);
	return 0;
}

/* The mapping { } section, then version_field, which a mongo sink needs
 * in the service's documents for its guard. */
static int build_mapping(struct conf_loader *ld, cfg_t *root, struct migrate_config *cfg)
{
	struct mapping *m = &cfg->mapping;
	char why[WHY_MAX];
	if (build_rules(ld, cfg_getsec(root, "mapping"), m) < 0)
		return -1;
	const char *vf = cfg_getstr(root, "version_field");
	if (vf == NULL)
		return 0;
	if (mapping_field_check(vf, why, sizeof(why)) < 0)
		return conf_fail(ld, root, "version_field", "%s", why);
	if (cfg->sink == SINK_MONGO && mapping_output_name(m, vf) == NULL)
		return conf_fail(ld, root, "version_field",
				 "'%s' is left out by the mapping, and the mongo sink's version guard needs it", vf);
	cfg->version_field = xstrdup(vf);
	return 0;
}

/* consumer, defaulting to hostname-pid. */
static int build_consumer(struct conf_loader *ld, cfg_t *root, struct migrate_config *cfg)
{
	const char *name = cfg_getstr(root, "consumer");
	if (name == NULL) {
		char host[256] = "";
		struct buf b;
		buf_init(&b);
		if (gethostname(host, sizeof(host) - 1) < 0 || host[0] == '\0')
			snprintf(host, sizeof(host), "migrator");
		buf_printf(&b, "%s-%ld", host, (long)getpid());
		cfg->consumer = buf_detach(&b);
		return 0;
	}
	if (!conf_all_of(name, conf_is_visible) || strlen(name) > CONSUMER_MAX)
		return conf_fail(ld, root, "consumer", "must be 1 to %d visible characters, without spaces",
				 CONSUMER_MAX);
	cfg->consumer = xstrdup(name);
	return 0;
}

/* batch, block, claim_idle and the retry { } section. */
static int build_loop(struct conf_loader *ld, cfg_t *root, struct migrate_config *cfg)
{
	cfg_t *retry = cfg_getsec(root, "retry");
	if (conf_get_int(ld, root, "batch", 1, MIGRATE_BATCH_MAX, &cfg->batch) < 0 ||
	    conf_get_int(ld, root, "block", 1, BLOCK_MAX, &cfg->block_ms) < 0 ||
	    conf_get_int(ld, root, "claim_idle", CLAIM_IDLE_MIN, CLAIM_IDLE_MAX, &cfg->claim_idle_ms) < 0 ||
	    conf_get_int(ld, retry, "attempts", 1, ATTEMPTS_MAX, &cfg->attempts) < 0 ||
	    conf_get_int(ld, retry, "backoff", 1, CONF_DURATION_MAX, &cfg->backoff_ms) < 0 ||
	    conf_get_int(ld, retry, "backoff_max", cfg->backoff_ms, CONF_DURATION_MAX, &cfg->backoff_max_ms) < 0)
		return -1;
	return 0;
}

/* A metrics_file option of sec, if set, into *out. */
static int get_metrics_file(struct conf_loader *ld, cfg_t *sec, char **out)
{
	const char *metrics = cfg_getstr(sec, "metrics_file");
	if (metrics == NULL)
		return 0;
	size_t len = strlen(metrics);
	if (len == 0 || metrics[len - 1] == '/')
		return conf_fail(ld, sec, "metrics_file", "must name a file, not '%s'", metrics);
	*out = xstrdup(metrics);
	return 0;
}

/* metrics_file and log_level. */
static int build_output(struct conf_loader *ld, cfg_t *root, struct migrate_config *cfg)
{
	const char *level = cfg_getstr(root, "log_level");
	if (get_metrics_file(ld, root, &cfg->metrics_file) < 0)
		return -1;
	if (log_level_parse(level, &cfg->log_level) < 0)
		return conf_fail(ld, root, "log_level", "must be error, warn, info or debug, not '%s'", level);
	return 0;
}

/* The verify { } section, read by `cutoverctl migration verify` only:
 * url, the service's read API (an http sink's; the mongo sink's copies
 * are read from its collection), and ignore, top-level fields of the
 * service's documents that only one side has. */
static int build_verify(struct conf_loader *ld, cfg_t *sec, struct migrate_config *cfg)
{
	const char *url = cfg_getstr(sec, "url");
	unsigned n = cfg_size(sec, "ignore");
	char why[WHY_MAX];
	if (url != NULL && cfg->sink == SINK_MONGO)
		return conf_fail(ld, sec, "url", "is not used with sink type mongo: verify reads the service's collection");
	if (url != NULL && sink_http_check_url(url, why, sizeof(why)) < 0)
		return conf_fail(ld, sec, "url", "%s", why);
	if (n > 0)
		cfg->verify_ignore = xcalloc(n, sizeof(*cfg->verify_ignore));
	for (unsigned i = 0; i < n; i++) {
		const char *field = cfg_getnstr(sec, "ignore", i);
		if (mapping_field_check(field, why, sizeof(why)) < 0)
			return conf_fail(ld, sec, "ignore", "%s", why);
		for (size_t k = 0; k < cfg->nverify_ignore; k++)
			if (strcmp(cfg->verify_ignore[k], field) == 0)
				return conf_fail(ld, sec, "ignore", "'%s' is listed twice", field);
		cfg->verify_ignore[cfg->nverify_ignore++] = xstrdup(field);
	}
	if (url != NULL)
		cfg->verify_url = xstrdup(url);
	return 0;
}

/* write_concern: "majority" or a number of members, 0 to 50. */
static int build_write_concern(struct conf_loader *ld, cfg_t *sec, struct syncback_config *sb)
{
	const char *wc = cfg_getstr(sec, "write_concern");
	if (strcmp(wc, "majority") == 0)
		sb->w = -1;
	else if (parse_decimal(wc, strlen(wc), 0, 50, &sb->w) < 0)
		return conf_fail(ld, sec, "write_concern", "must be majority or a number from 0 to 50, not '%s'", wc);
	return conf_get_int(ld, sec, "timeout", 1, CONF_DURATION_MAX, &sb->wtimeout_ms);
}

/* A top-level field name option of sec into *out. */
static int get_field(struct conf_loader *ld, cfg_t *sec, const char *name, char **out)
{
	char why[WHY_MAX];
	const char *field = cfg_getstr(sec, name);
	if (mapping_field_check(field, why, sizeof(why)) < 0 || strcmp(field, "_id") == 0)
		return conf_fail(ld, sec, name, "%s", strcmp(field, "_id") == 0 ? "cannot be _id" : why);
	*out = xstrdup(field);
	return 0;
}

/* The syncback { } section. Its state field is sync-back's bookkeeping
 * in legacy documents: the migrator must never copy it to the service,
 * so the forward mapping drops it (or refuses to keep it). */
static int build_syncback(struct conf_loader *ld, cfg_t *sec, struct migrate_config *cfg)
{
	struct syncback_config *sb = &cfg->syncback;
	const char *stream = cfg_getstr(sec, "stream"), *deletes = cfg_getstr(sec, "deletes");
	char why[WHY_MAX];
	if (stream == NULL) {
		struct buf b;
		buf_init(&b);
		buf_printf(&b, "%s:service:events", cfg->redis_prefix);
		sb->stream = buf_detach(&b);
	} else if (stream[0] == '\0' || !conf_all_of(stream, conf_is_visible)) {
		return conf_fail(ld, sec, "stream", "must be a Redis key of visible characters, not '%s'", stream);
	} else {
		sb->stream = xstrdup(stream);
	}
	if (strcmp(deletes, "tombstone") == 0)
		sb->deletes = SYNCBACK_TOMBSTONE;
	else if (strcmp(deletes, "delete") == 0)
		sb->deletes = SYNCBACK_DELETE;
	else
		return conf_fail(ld, sec, "deletes", "must be tombstone or delete, not '%s'", deletes);
	if (get_field(ld, sec, "tombstone_field", &sb->tombstone_field) < 0 ||
	    get_field(ld, sec, "state_field", &sb->state_field) < 0 || build_write_concern(ld, sec, sb) < 0 ||
	    get_metrics_file(ld, sec, &sb->metrics_file) < 0 || build_rules(ld, cfg_getsec(sec, "mapping"), &sb->mapping) < 0)
		return -1;
	if (bson_count_keys(sb->mapping.defaults) > 0)
		return conf_fail(ld, cfg_getsec(sec, "mapping"), "default",
				 "is not for sync-back: an update event carries only the fields it changed");
	if (strcmp(sb->state_field, sb->tombstone_field) == 0)
		return conf_fail(ld, sec, "state_field", "'%s' is the tombstone_field too", sb->state_field);
	if (mapping_output_name(&cfg->mapping, sb->state_field) == NULL)
		return 0;
	if (cfg->mapping.nkeep > 0)
		return conf_fail(ld, sec, "state_field", "'%s' is in mapping.keep, but it must not reach the service",
				 sb->state_field);
	if (mapping_add_drop(&cfg->mapping, sb->state_field, why, sizeof(why)) < 0)
		return conf_fail(ld, sec, "state_field", "%s", why);
	return 0;
}

/* Checks everything libconfuse does not, in the order of the shipped
 * file, filling the struct migrate_config at arg. */
static int build_config(struct conf_loader *ld, cfg_t *root, void *arg)
{
	struct migrate_config *cfg = arg;
	if (conf_get_redis(ld, cfg_getsec(root, "redis"), &cfg->redis_url, &cfg->redis_prefix) < 0 ||
	    build_legacy(ld, cfg_getsec(root, "legacy"), cfg) < 0 ||
	    build_sink(ld, cfg_getsec(root, "sink"), cfg) < 0 || build_mapping(ld, root, cfg) < 0 ||
	    build_loop(ld, root, cfg) < 0 || build_consumer(ld, root, cfg) < 0 || build_output(ld, root, cfg) < 0 ||
	    build_verify(ld, cfg_getsec(root, "verify"), cfg) < 0 || build_syncback(ld, cfg_getsec(root, "syncback"), cfg) < 0)
		return -1;
	return 0;
}

static void mongo_target_free(struct mongo_target *t)
{
	free(t->uri);
	free(t->database);
	free(t->collection);
}

/* Frees cfg and everything it owns; takes a half-built one too. */
void migrate_config_free(struct migrate_config *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->path);
	free(cfg->redis_url);
	free(cfg->redis_prefix);
	mongo_target_free(&cfg->legacy);
	free(cfg->sink_url);
	mongo_target_free(&cfg->service);
	free(cfg->version_field);
	mapping_free(&cfg->mapping);
	free(cfg->consumer);
	free(cfg->metrics_file);
	free(cfg->verify_url);
	for (size_t i = 0; i < cfg->nverify_ignore; i++)
		free(cfg->verify_ignore[i]);
	free(cfg->verify_ignore);
	free(cfg->syncback.stream);
	free(cfg->syncback.tombstone_field);
	free(cfg->syncback.state_field);
	free(cfg->syncback.metrics_file);
	mapping_free(&cfg->syncback.mapping);
	free(cfg);
}

/*
 * Reads and checks the file at path. Returns 0 and a new configuration in
 * *out (the caller frees it with migrate_config_free), or -1 with the
 * first problem in err as "FILE:LINE: reason", *out untouched.
 */
int migrate_config_load(const char *path, struct migrate_config **out, char *err, size_t errlen)
{
	struct migrate_config *cfg = xcalloc(1, sizeof(*cfg));
	cfg->path = xstrdup(path);
	mapping_init(&cfg->mapping);
	mapping_init(&cfg->syncback.mapping);
	if (conf_load(path, root_opts, build_config, cfg, err, errlen) < 0) {
		migrate_config_free(cfg);
		return -1;
	}
	*out = cfg;
	return 0;
}
