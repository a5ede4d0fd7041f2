/* What Debian's libelf.a (built against glibc) calls that musl does not have. Compiled with
 * musl-gcc and added to the copy of libelf.a the agent's static binary links
 * (xtask/src/package.rs). */
#include <stddef.h>

/* glibc's rawmemchr: memchr without a bound; the caller knows `c` is there. */
void *rawmemchr(const void *s, int c)
{
    const unsigned char *p = s;
    while (*p != (unsigned char)c)
        p++;
    return (void *)p;
}
