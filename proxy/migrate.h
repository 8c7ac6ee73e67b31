/*
 * migrate.h - the proxy's side of lazy migration: putting first-seen users
 * on the migrate stream, and knowing which users are migrated (the read
 * guard). One Redis link per worker, on the worker's own event loop.
 */
#ifndef CUTOVER_PROXY_MIGRATE_H
#define CUTOVER_PROXY_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flags/flags.h"

/* idset.c */
struct idset {
	uint64_t *slots;
	size_t mask;
	size_t count;
	size_t limit;
	bool forgetful;
};
void idset_init(struct idset *s, size_t limit, bool forgetful);
void idset_free(struct idset *s);
uint64_t idset_hash(const char *id, size_t len);
bool idset_has(const struct idset *s, uint64_t h);
void idset_add(struct idset *s, uint64_t h);
size_t idset_bytes(const struct idset *s);

/* migrate.c */
struct worker;
struct migrate_link;
struct migrate_link *migrate_link_new(struct worker *w);
void migrate_link_free(struct migrate_link *m);
void migrate_first_seen(struct migrate_link *m, const char *user, size_t len);
struct proxy_config;
bool migrate_settled(const struct migrate_link *m);
void migrate_link_retarget(struct migrate_link *m, const struct proxy_config *cfg);
bool migrate_is_migrated(const struct migrate_link *m, const char *user, size_t len);
void migrate_created(struct migrate_link *m, const char *user, size_t len);
void migrate_priority(struct migrate_link *m, const char *user, size_t len);
void migrate_refresh(struct migrate_link *m, const char *user, size_t len);

#endif
