/*
 * conf.h - configuration files in libconfuse syntax, checked as a whole
 * after parsing, with the first problem reported as "FILE:LINE: reason".
 * Shared by cutover-proxy (proxy/config.c) and cutover-migrate
 * (migrator/config.c); conf.c says which libconfuse quirks it works
 * around. Only programs that use libconfuse include this header.
 */
#ifndef CUTOVER_CONF_H
#define CUTOVER_CONF_H

#include <confuse.h>

#include "common/common.h"

#define CONF_DURATION_MAX 3600000 /* milliseconds: one hour */

/* A load in progress: where errors go and on which line each option was
 * set. Build callbacks receive it and pass it back to conf_fail. */
struct conf_loader;

/* Checks what libconfuse does not and fills arg; returns 0, or -1 after
 * conf_fail or conf_report. */
typedef int (*conf_build_fn)(struct conf_loader *ld, cfg_t *root, void *arg);

int conf_load(const char *path, cfg_opt_t *opts, conf_build_fn build, void *arg, char *err,
	      size_t errlen);
int conf_report(struct conf_loader *ld, int line, const char *fmt, ...) CUTOVER_PRINTF(3, 4);
int conf_fail(struct conf_loader *ld, cfg_t *sec, const char *name, const char *fmt, ...)
	CUTOVER_PRINTF(4, 5);
int conf_section_line(const struct conf_loader *ld, cfg_t *sec);
int conf_option_line(const struct conf_loader *ld, cfg_t *sec, const char *name);
int conf_get_int(struct conf_loader *ld, cfg_t *sec, const char *name, long min, long max, int *out);
int conf_plain_decimal(cfg_t *cfg, cfg_opt_t *opt, const char *value, void *result);

/* The redis { url, prefix } section both programs have, and its check:
 * *url and *prefix are new strings on success. */
extern cfg_opt_t conf_redis_opts[];
int conf_get_redis(struct conf_loader *ld, cfg_t *sec, char **url, char **prefix);

/* Character classes and spans for checking values. */
bool conf_is_digit(char c);
bool conf_is_word_char(char c);
bool conf_is_visible(char c);
size_t conf_span(const char *s, size_t len, bool (*ok)(char));
bool conf_all_of(const char *s, bool (*ok)(char));

#endif
