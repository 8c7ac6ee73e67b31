/*
 * murmur3.c - MurmurHash3 x86_32 (Austin Appleby's public-domain
 * algorithm), written to be fed in pieces so that `salt ":" user` is
 * hashed without building the concatenation, and so a flag can keep the
 * state after its salt and finish it per user.
 */
#include "flags.h"

#define MURMUR3_C1 0xcc9e2d51u
#define MURMUR3_C2 0x1b873593u

static inline uint32_t rotl32(uint32_t x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static inline uint32_t murmur3_scramble(uint32_t k)
{
	k *= MURMUR3_C1;
	k = rotl32(k, 15);
	return k * MURMUR3_C2;
}

static inline uint32_t murmur3_mix(uint32_t h, uint32_t k)
{
	h ^= murmur3_scramble(k);
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64u;
}

/* Blocks are read little-endian whatever the host, so buckets agree
 * across machines. */
static inline uint32_t load_le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void murmur3_init(struct murmur3 *m, uint32_t seed)
{
	m->h = seed;
	m->tail = 0;
	m->ntail = 0;
	m->total = 0;
}

void murmur3_update(struct murmur3 *m, const void *data, size_t len)
{
	const unsigned char *p = data;
	m->total += (uint32_t)len;
	while (m->ntail > 0 && len > 0) {
		m->tail |= (uint32_t)*p++ << (8 * m->ntail);
		len--;
		if (++m->ntail == 4) {
			m->h = murmur3_mix(m->h, m->tail);
			m->tail = 0;
			m->ntail = 0;
		}
	}
	if (len == 0)
		return; /* the tail may still hold bytes from earlier calls */
	for (; len >= 4; p += 4, len -= 4)
		m->h = murmur3_mix(m->h, load_le32(p));
	for (size_t i = 0; i < len; i++)
		m->tail |= (uint32_t)p[i] << (8 * i);
	m->ntail = (uint32_t)len;
}

uint32_t murmur3_final(const struct murmur3 *m)
{
	uint32_t h = m->h;
	if (m->ntail > 0)
		h ^= murmur3_scramble(m->tail);
	h ^= m->total;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

uint32_t murmur3_32(const void *data, size_t len, uint32_t seed)
{
	struct murmur3 m;
	murmur3_init(&m, seed);
	murmur3_update(&m, data, len);
	return murmur3_final(&m);
}
