"""The agent: tako's runtime on every server (leases, releases, release runs, rollouts, the router).

This package is exactly what the agent's zipapp ships (tako_core/transport/agent_zipapp.py builds it)
and runs on the server's own python3 (3.10+), so it imports only the stdlib, `tako_core/__init__.py`,
`tako_core/mask.py`, itself and h11 (pure Python, bundled). The client's side is
tako_core/transport/agent_client.py; `contract` is the one module both ends import.

    contract       the wire contract: framing, error codes, the Op registry, every result and event
    server         the unix socket: NDJSON requests in, tagged events and results out, multiplexed by id
    service        what each op does: one Agent method per Op, bound with @handles
    params         typed access to a request's parameters, validated (a BAD_REQUEST otherwise)
    leases         one deploy per app/env at a time, kept in run/leases.json across restarts
    releases       release directories: prepare (unpack + install), completeness, cleanup, `current`, pruning
    installs       the install step: outputs reused by a content key (command + lockfiles), package caches
    uploads        artifacts arriving over the socket in raw chunks (Op.UPLOAD), published when whole
    delta          a release assembled from kept releases' files plus a delta archive of what changed
    stamps         a release's stat record (size, times, inode, hash per file): kept files trusted unread
    extract        unpacking an uploaded tar.zst or tar.gz safely
    runs           release commands, detached from any client, their logs resumable by byte offset
    procs          child processes: their environment, their own process group, their output, killing them;
                   instances' output on FIFOs and pidfd watching, so they outlive the agent (adoption)
    rollout        the instances of one app/env and their rolling update, kept in state.json for restarts
    instances      one instance: the app's `start` process on a loopback port, restarted when it dies,
                   left running across an agent restart and adopted by the next agent
    health         probing an instance's health path over loopback HTTP
    logs           instance output of one app/env: stamped lines in a rotated file, read back by cursor
    oneoff         one-off commands (`tako run`): once, in the running release, with the instances' env
    router         the HTTP router's public side (Router, Upstream): listening (HTTP, and HTTPS by SNI),
                   a task per client, idle sweeps, ACME challenges and the 308 to HTTPS on the HTTP port
    certs          the router's certificates: per app/env a chain + key in ROOT/tls (0600), chosen by SNI
    route_table    pure logic: Host -> route -> upstream (round robin), atomic switches, in-flight, drains
    upstream_pool  connections to one upstream: idle keep-alive ones reused, new ones opened with a deadline
    stream         one asyncio Protocol per socket (client or upstream): reads, writes, flow control
    proxy          one proxied exchange: request forwarded, response relayed, bodies re-framed, tunnels
    heads          the heads the router writes: to upstreams (hop-by-hop dropped, X-Forwarded-*), to clients
    http1          HTTP/1.1 parsing: typed events, the framing and smuggling rules, one Parser protocol
    http1_llhttp   the parser over httptools (llhttp), used where the host has it or setup shipped its wheel
    http1_h11      the parser over the bundled pure-Python h11, used elsewhere
    layout         where things live under ROOT, and the names allowed in paths
    acme           the ACME client (RFC 8555, HTTP-01): `obtain` a certificate chain from a CA's directory
    acme_crypto    the ACME client's crypto through the `openssl` command: keys, ES256 JWS, CSR, cert_info
    acme_renewal   when to renew: a third of the lifetime left, ACME Renewal Information, backoff
    autocerts      tls = "auto": per env a task; the leader orders and renews, followers copy its certificate
    leader_link    a follower's requests to its leader: challenges it lacks, the certificate (pinned TLS)
    accounts       one Unix user per app/env (an agent running as root): its name, creating it
    daemon         running the agent: one per root (a file lock), its router, socket, log and pid file;
                   restarting in place (SIGWINCH): router sockets handed over, instances kept, exec
    cli            the command line: `serve [--https-port P] [--trusted-proxy A] [--client-user U]
                   [--detach]`, `version`, `bridge SOCKET`
    bridge         stdin/stdout joined to the control socket: the install command's own channel
                   becomes the client's first connection to the new agent
    __main__       `python3 -m tako_core.agent`, as the zipapp's own __main__: runs cli
    compat         the Python 3.10 differences the agent must honour

HTTPS. The router terminates TLS itself (stdlib `ssl`, TLS 1.2+, ALPN http/1.1) on `--https-port`,
beside the HTTP listener: asyncio's TLS transport does the handshake, then the connection is served
by the very same stream/proxy code as plain HTTP (framing, smuggling checks, deadlines), with
`X-Forwarded-Proto: https` to the app. The listener's context holds no certificate: its SNI callback
swaps in the context of the app/env whose certificate names the server name (`certs`), and a name
without one gets an `unrecognized_name` alert. Certificates arrive by Op.CERT_INSTALL (the client's
deploy with a brought certificate; the private key only ever crosses the SSH channel and lands in a
0600 file of the agent's user, in a 0700 folder no app user can enter) and leave by Op.CERT_REMOVE;
a swap is one dict assignment: new handshakes get the new certificate, open connections keep theirs.
On the HTTP port, `/.well-known/acme-challenge/<token>` is answered from `Router.challenges` (filled
by whoever orders a certificate; `Router.challenge` is the hook for forwarding to an env's leader),
and any other request for a host with a certificate gets a 308 to https://. STATUS shows each
app/env's certificate (names, issuer, expiry). The HTTPS socket is handed over on a restart in place
like the HTTP one (LISTEN_FDNAMES says which is which).

Automatic certificates (`tls = "auto"`, autocerts and leader_link; their module docstrings say more).
One ACME order per env and renewal, by the env's leader (the deploy's leader): Op.TLS_AUTO gives every
server the names, the ACME settings and its role, kept in ROOT/acme (0600) so that renewals need no
client and survive restarts. The leader runs `acme.obtain` (account key ROOT/acme/account.key, one
certificate key per env, reused by every renewal) and installs the chain like CERT_INSTALL. A
follower's router forwards a challenge token it does not hold to the leader's HTTP port, so the
CA's validation succeeds whichever server DNS sends it to; the follower fetches the certificate from
the leader's HTTPS port (`/.well-known/tako/certificate`, Bearer sync token), trusting the leader
only if its key matches the pin the leader gave the client. Op.TLS_RENEW orders (leader) or fetches
(follower) now; STATUS shows each env's auto state. CERT_INSTALL and CERT_REMOVE stop it.
"""
