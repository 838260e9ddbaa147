/**
 * Which connection a full server closes for a new one: the one ranking of the admin and account listeners
 * (connection-room.ts), the policy services (policy-server.ts) and the SMTP listeners (listener-room.ts). Each
 * says what its connections have done; the order is decided here alone.
 *
 * Lowest rank first, then the one that made progress longest ago: 0, it never sent a byte (holding it costs its
 * client nothing); 1, it sent something but made no progress (a TLS handshake, a request or a command line under
 * way); 2, it made progress (a handshake done, a request or a command received: now idle between them). Ordered
 * by progress alone, a connection that had just finished its handshake was the stalest as soon as a few newer
 * silent connections were open: a flood from a shared address closed it before its request came. A client keeps
 * a place of rank 2 only by finishing a handshake, request or command for it, and loses it to the next new
 * connection once no connection of a lower rank is left.
 */

export interface Standing {
  /** It made progress since it was accepted (see above). */
  advanced: boolean;
  /** It sent at least a byte. */
  sentAnything: boolean;
  /** When it last made progress: a sequence number (lower: longer ago). */
  progress: number;
}

/** 0, 1 or 2 as above. */
export const rankOf = (s: Standing): number => (s.advanced ? 2 : s.sentAnything ? 1 : 0);

/**
 * The one of `candidates` to close first; `standingOf` gives null for one that must not be closed (being
 * answered, just accepted, already closing). Null when none may be.
 */
export function firstToClose<T>(candidates: Iterable<T>, standingOf: (candidate: T) => Standing | null): T | null {
  let best: T | null = null;
  let bestRank = Infinity;
  let bestProgress = Infinity;
  for (const candidate of candidates) {
    const standing = standingOf(candidate);
    if (!standing) continue;
    const rank = rankOf(standing);
    if (rank < bestRank || (rank === bestRank && standing.progress < bestProgress)) {
      [best, bestRank, bestProgress] = [candidate, rank, standing.progress];
    }
  }
  return best;
}

/** A shared sequence for `progress`: only the order matters, so one counter serves every server in the process. */
let clock = 0;
export const nextProgress = (): number => ++clock;
