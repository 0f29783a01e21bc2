/*
 * One live room per meeting: a model of roompin's placement protocol,
 * checked with spin by tests/tests/protocol_model.rs (so, in CI).
 *
 *   spin -a one_live_room.pml
 *   cc -O2 -DSAFETY -DBITSTATE -DT_RAND -DP_RAND -o pan pan.c
 *   ./pan -m3000 -w26 -RS1        # one search of a swarm; vary -RS
 *
 * The state space is far too large to enumerate (tens of millions of
 * states even at tight bounds), so it is searched as a swarm: randomised
 * depth-first searches with bitstate hashing, on tight bounds
 * (-DMAXJOINS=3 -DMAXPUB=0 -DMAXREPUSH=0 -DMAXDROP=0, which still loses
 * messages to full inboxes) and on the defaults below. Each rule of the
 * protocol was checked to matter: with it removed, the swarm finds a
 * violation within seconds (a node that ignores a peer that wins ties, one
 * that never yields, one that ignores "moving to another node", one whose
 * tombstone forgets what it handed over, one that trusts a receiver's
 * "absent" right after a handoff, one that adopts a handoff it promised to
 * refuse). The test re-checks two of these mutants on every run. The
 * search found one real bug: a room handed on and straight back, before
 * the answer to its first handoff came, was refused as a conflict and
 * lost; a holder now adopts its own room back (Placement::adopt).
 *
 * What it covers: one meeting, 3 nodes, 2 balancers. Each balancer changes
 * its view of the meeting's owner (a config edit, a health change) on its
 * own schedule and pushes it to every node; joins are routed by whatever
 * view a balancer has. Every message between processes (view pushes,
 * where-is questions and their answers, handoffs and their answers, abort
 * settlements, forwarded publishes) may be delayed, reordered or lost.
 * Members publish into the live room, and into a room in transit (queued).
 *
 * What it asserts, in every reachable state:
 *   - at most one node holds a live room of the meeting (live <= 1);
 *   - no acknowledged publish is lost: whenever a room is live, its seq is
 *     the number of publishes acknowledged so far (so a room is never opened
 *     afresh once anything was acknowledged, and a handoff carries all);
 *   - a handoff never meets another live room of the meeting (Conflict).
 * A publish is acknowledged when it enters the live room (a 202, or a
 * WebSocket message taken); one queued with a room in transit is
 * acknowledged only once it reaches the room's new holder, and a forward
 * that is lost is reported to its client as not delivered.
 *
 * What it leaves out, on purpose: crashes (a process that dies loses its
 * room; recovered: false is then expected), the lease (a node that hears no
 * balancer fences itself) and time in general. Tombstones here never
 * expire; the implementation keeps them 60 s and trusts no answer older
 * than 750 ms (claim::ANSWER_TIMEOUT), which is what makes a finite
 * tombstone as good as this one. The rule that trusts a receiver's
 * "absent" a second after a handoff (claim::SETTLED) is about restarted
 * receivers, which need crashes, so it is not used here: the model takes
 * the stricter branch (ask again).
 *
 * Each step names the function it stands for.
 */

#define NN 3        /* nodes */
#define NB 2        /* balancers */
#define NONE 255

/* Message kinds. */
#define PUSH    1   /* balancer -> node: x = epoch, y = owner            */
#define JOIN    2   /* balancer -> node: x = balancer, y = routed epoch   */
#define WHERE   3   /* node -> node: x = round                            */
#define ANS     4   /* node -> node: x = round, y = holding*8 + target    */
#define HANDOFF 5   /* node -> node: x = seq, y = move id*32 + room        */
#define HACK    6   /* node -> node: x = outcome, y = the move id answered */
#define ABORT   7   /* node -> node: y = room incarnation                 */
#define AREP    8   /* node -> node: x = adopted (0/1)                    */
#define PUBFWD  9   /* node -> node: x = count of forwarded publishes     */

/* Slots (placement::Slot). */
#define S_NONE   0
#define S_LIVE   1
#define S_ACQ    2
#define S_MOVING 3
#define S_MOVED  4

/* Holdings (control::Holding), plus the answers a round can see. */
#define H_ABSENT  0
#define H_LIVE    1
#define H_MOVING  2
#define H_MOVED   3
#define H_ACQ     4
#define H_UNKNOWN 5   /* no answer in time (peers::Answer::Unknown) */
#define H_WAITING 6   /* not answered yet                            */

/* Handoff outcomes (control::HandoffOutcome). */
#define O_ADOPTED  0
#define O_DUP      1
#define O_CONFLICT 2
#define O_ABORTED  3

/* Bounds that keep the state space finite; spin -D... overrides them. */
#ifndef MAXCHANGES
#define MAXCHANGES 2   /* view changes per balancer   */
#endif
#ifndef MAXJOINS
#define MAXJOINS   4   /* joins routed, in all        */
#endif
#ifndef MAXPUB
#define MAXPUB     2   /* publishes, in all           */
#endif
#ifndef MAXDROP
#define MAXDROP    2   /* messages lost, in all       */
#endif
#ifndef MAXROUNDS
#define MAXROUNDS  2   /* claim rounds per acquisition */
#endif
#ifndef MAXREPUSH
#define MAXREPUSH  2   /* periodic re-pushes, in all   */
#endif
#ifndef MAXABORT
#define MAXABORT   2   /* settlement questions per node */
#endif
#ifndef QLEN
#define QLEN       6   /* messages a node's inbox holds */
#endif

typedef msg_t { byte kind; byte from; byte x; byte y };
chan ch[NN] = [QLEN] of { byte, byte, byte, byte };

/* What the checks look at. */
byte live = 0;        /* nodes whose slot is S_LIVE            */
byte acked = 0;       /* publishes acknowledged to a client    */
byte drops = 0;
bool lost = false;    /* some message was lost (dropped or overflowed) */
byte joins = 0;
byte pubs = 0;
byte repushes = 0;
byte incarnations = 0;

/* Balancers' views. */
byte bepoch[NB];
byte bowner[NB];

/* Nodes. */
byte slot[NN];
byte seq[NN];          /* the room's seq (live or moving)           */
byte room[NN];         /* the room's incarnation                    */
byte target[NN];       /* moving/moved: where to                    */
byte mid[NN];          /* the current move's id (MoveOrder::id)     */
byte queued[NN];       /* publishes queued while moving             */
byte round[NN];
byte rounds_left[NN];
bool yielded[NN];
byte ans[NN*NN];       /* ans[me*NN+peer]: holding*8 + target       */
byte vepoch[NN*NB];    /* what node i knows of balancer b           */
byte vowner[NN*NB];
byte aborted[NN];      /* incarnation promised never to be adopted  */
bool settling[NN];
byte aborts[NN];

#define V(i,b) vepoch[(i)*NB+(b)]
#define O(i,b) vowner[(i)*NB+(b)]
#define A(i,p) ans[(i)*NN+(p)]

#define CHECK_LIVE(i) assert(live <= 1); assert(seq[i] == acked)

/* The network delivers any kind of message from any sender, not only the
 * oldest one in the inbox: messages are reordered freely, except that two
 * of the same kind from the same sender keep their order (for views that
 * is no loss of generality: a node ignores a view older than one it has;
 * answers and rounds carry round numbers). Inboxes are kept sorted (!!),
 * so that the order in which messages arrived does not multiply states. */
#define TAKE(K, F) :: ch[i]??[K, F, x, y] -> kind = K; from = F; ch[i]??eval(kind), eval(from), x, y

/* A message to a full channel is lost, like any other (sends never block,
 * so no process waits on another's buffer). */
inline send(s_to, s_kind, s_from, s_x, s_y) {
    atomic {
        if
        :: nfull(ch[s_to]) -> ch[s_to]!!s_kind, s_from, s_x, s_y
        :: full(ch[s_to]) -> lost = true
        fi
    }
}

/* Ownership::move_target: a room leaves once the views that carry the
 * newest config name another node (views with an older config are not
 * waited for), or once no view names this node. The model lets it leave
 * whenever any view names another node: a superset of that rule, so that
 * any choice of which views count is covered. r: it must stay. */
inline named_me(i, r) {
    r = (O(i,0) == i && O(i,1) == i)
}

/* Placement::close_for_move (and Room::close_for_move): the room stops
 * serving and its handoff goes out. */
inline close_for_move(i, to) {
    slot[i] = S_MOVING; target[i] = to; live--;
    settling[i] = false; mid[i] = (mid[i] + 1) % 8;
    send(to, HANDOFF, i, seq[i], mid[i]*32 + room[i])
}

/* Placement::start_moves / answer_where: pick the new holder among the
 * nodes a view names (the implementation takes the majority, then the
 * newest view; any choice must be safe). */
inline maybe_move(i, asker) {
    named_me(i, t1);
    if
    :: slot[i] == S_LIVE && !t1 ->
        if
        :: asker != NONE && (O(i,0) == asker || O(i,1) == asker) -> close_for_move(i, asker)
        :: asker == NONE || (O(i,0) != asker && O(i,1) != asker) ->
            if
            :: O(i,0) != i -> close_for_move(i, O(i,0))
            :: O(i,1) != i -> close_for_move(i, O(i,1))
            fi
        fi
    :: else -> skip
    fi
}

/* claim::run: ask every peer. */
inline start_round(i) {
    round[i]++; yielded[i] = false;
    for (p : 0 .. NN-1) {
        if
        :: p != i -> A(i,p) = H_WAITING*8; send(p, WHERE, i, round[i], 0)
        :: else -> A(i,p) = H_ABSENT*8
        fi
    }
}

/* claim::decide_round, over A(i, *). d: 0 create, 1 relay, 2 await, 3 retry. */
inline decide(i, d) {
    d = 0;
    if :: yielded[i] -> d = 3 :: else -> skip fi;
    for (p : 0 .. NN-1) {
        if
        :: d == 0 || d == 2 ->
            h = A(i,p) / 8; t2 = A(i,p) % 8;
            if
            :: h == H_LIVE -> d = 1
            :: h == H_MOVING && t2 == i -> d = 2
            :: h == H_MOVING && t2 != i -> d = 3
            :: h == H_MOVED && t2 != i && A(i,t2) / 8 != H_LIVE -> d = 3
            :: h == H_ACQ && p < i -> d = 3        /* wins_tie */
            :: h == H_UNKNOWN || h == H_WAITING -> d = 3
            :: else -> skip
            fi
        :: else -> skip
        fi
    }
    /* A live room anywhere wins over everything else. */
    for (p : 0 .. NN-1) {
        if :: A(i,p) / 8 == H_LIVE -> d = 1 :: else -> skip fi
    }
}

/* Placement::finish_round. */
inline finish_round(i) {
    decide(i, d);
    if
    :: d == 0 ->
        d_step {
            slot[i] = S_LIVE; live++; seq[i] = 0;
            incarnations++; room[i] = incarnations;
            CHECK_LIVE(i)
        }
    :: d == 1 -> slot[i] = S_NONE   /* relay to the holder (Slot::Elsewhere) */
    :: d >= 2 && rounds_left[i] > 0 -> rounds_left[i]--; start_round(i)
    :: d >= 2 && rounds_left[i] == 0 -> slot[i] = S_NONE   /* give_up */
    fi
}

/* Forwarded publishes reach a node (control::publish): into the live
 * room, queued with a room in transit, or on along a tombstone. With no
 * room and no tombstone they are reported as not delivered (not acked). */
inline apply_forward(i, n) {
    if
    :: slot[i] == S_LIVE -> d_step { seq[i] = seq[i] + n; acked = acked + n; CHECK_LIVE(i) }
    :: slot[i] == S_MOVING -> queued[i] = queued[i] + n
    :: slot[i] == S_MOVED -> send(target[i], PUBFWD, i, n, 0)
    :: else -> skip
    fi
}

/* Placement::finish_move + mover::finish. */
inline landed(i) {
    slot[i] = S_MOVED;
    if
    :: queued[i] > 0 -> send(target[i], PUBFWD, i, queued[i], 0); queued[i] = 0
    :: else -> skip
    fi
}

inline reopen(i) {
    d_step {
        slot[i] = S_LIVE; live++;
        seq[i] = seq[i] + queued[i]; acked = acked + queued[i]; queued[i] = 0;
        CHECK_LIVE(i)
    }
}

proctype Balancer(byte b) {
    byte changes = 0;
    byte n;
    do
    /* A config edit or a health change: a new view, pushed to all. */
    :: atomic {
        changes < MAXCHANGES ->
        changes++;
        if
        :: bowner[b] = 0
        :: bowner[b] = 1
        :: bowner[b] = 2
        fi;
        bepoch[b]++;
        for (n : 0 .. NN-1) { send(n, PUSH, b, bepoch[b], bowner[b]) }
       }
    /* The periodic re-push (push_interval_ms), to one node. */
    :: atomic {
        repushes < MAXREPUSH ->
        repushes++;
        if
        :: send(0, PUSH, b, bepoch[b], bowner[b])
        :: send(1, PUSH, b, bepoch[b], bowner[b])
        :: send(2, PUSH, b, bepoch[b], bowner[b])
        fi
       }
    /* A client connects through this balancer (proxy::upstream_peer). */
    :: atomic {
        joins < MAXJOINS ->
        joins++;
        send(bowner[b], JOIN, b, bepoch[b], 0)
       }
    :: else -> break
    od
}

proctype Node(byte i) {
    byte kind, from, x, y;
    byte d, h, t1, t2, p;
    /* A node waits for messages for ever: a valid end state. */
end:
    do
    /* Each message is handled in one step, as the node's handlers change
     * its placement table under one lock. */
    :: atomic {
        if
        TAKE(PUSH, 0) TAKE(PUSH, 1) TAKE(JOIN, 0) TAKE(JOIN, 1)
        TAKE(WHERE, 0) TAKE(WHERE, 1) TAKE(WHERE, 2)
        TAKE(ANS, 0) TAKE(ANS, 1) TAKE(ANS, 2)
        TAKE(HANDOFF, 0) TAKE(HANDOFF, 1) TAKE(HANDOFF, 2)
        TAKE(HACK, 0) TAKE(HACK, 1) TAKE(HACK, 2)
        TAKE(ABORT, 0) TAKE(ABORT, 1) TAKE(ABORT, 2)
        TAKE(AREP, 0) TAKE(AREP, 1) TAKE(AREP, 2)
        TAKE(PUBFWD, 0) TAKE(PUBFWD, 1) TAKE(PUBFWD, 2)
        fi;
        if
        /* ...or loses it... */
        :: drops < MAXDROP -> drops++; lost = true
        /* ...or it arrives. */
        :: true ->
            if
            /* control::view: Ownership::apply, then start_moves. */
            :: kind == PUSH ->
                if :: x >= V(i,from) -> V(i,from) = x; O(i,from) = y :: else -> skip fi;
                maybe_move(i, NONE)
            /* Node::admit: placement::admission_rule. */
            :: kind == JOIN ->
                if
                :: slot[i] == S_LIVE -> skip                       /* Serve */
                :: slot[i] == S_ACQ || slot[i] == S_MOVING -> skip /* Wait (gives up here) */
                :: else ->
                    if
                    :: V(i,from) >= y && O(i,from) != i -> skip    /* 421 */
                    :: else -> slot[i] = S_ACQ; rounds_left[i] = MAXROUNDS; start_round(i)
                    fi
                fi
            /* control::where_is: Placement::answer_where. */
            :: kind == WHERE ->
                if
                :: slot[i] == S_LIVE ->
                    maybe_move(i, from);
                    if
                    :: slot[i] == S_MOVING -> send(from, ANS, i, x, H_MOVING*8 + target[i])
                    :: else -> send(from, ANS, i, x, H_LIVE*8)
                    fi
                :: slot[i] == S_ACQ ->
                    if :: from < i -> yielded[i] = true :: else -> skip fi;
                    send(from, ANS, i, x, H_ACQ*8)
                :: slot[i] == S_MOVING -> send(from, ANS, i, x, H_MOVING*8 + target[i])
                :: slot[i] == S_MOVED -> send(from, ANS, i, x, H_MOVED*8 + target[i])
                :: slot[i] == S_NONE -> send(from, ANS, i, x, H_ABSENT*8)
                fi
            /* claim::run collects answers of its own round only. */
            :: kind == ANS ->
                if
                :: slot[i] == S_ACQ && x == round[i] && A(i,from) / 8 == H_WAITING ->
                    A(i,from) = y;
                    if
                    :: A(i,0) / 8 != H_WAITING && A(i,1) / 8 != H_WAITING && A(i,2) / 8 != H_WAITING ->
                        finish_round(i)
                    :: else -> skip
                    fi
                :: else -> skip
                fi
            /* control::handoff: Placement::adopt. */
            :: kind == HANDOFF ->
                if
                :: aborted[i] == y % 32 -> send(from, HACK, i, O_ABORTED, y / 32)
                :: slot[i] == S_LIVE && room[i] == y % 32 -> send(from, HACK, i, O_DUP, y / 32)
                :: (slot[i] == S_LIVE || slot[i] == S_MOVING) && room[i] != y % 32 ->
                    send(from, HACK, i, O_CONFLICT, y / 32)
                /* Our own room, handed on and back before our handoff's
                 * answer came: it landed, and returns with what was added
                 * there. Adopt it; what was queued here goes into it. */
                :: aborted[i] != y % 32 && slot[i] == S_MOVING && room[i] == y % 32 ->
                    d_step {
                        slot[i] = S_LIVE; live++; seq[i] = x + queued[i];
                        acked = acked + queued[i]; queued[i] = 0; CHECK_LIVE(i)
                    }
                    send(from, HACK, i, O_ADOPTED, y / 32)
                :: aborted[i] != y % 32 && (slot[i] == S_NONE || slot[i] == S_ACQ || slot[i] == S_MOVED) ->
                    d_step { slot[i] = S_LIVE; live++; seq[i] = x; room[i] = y % 32; CHECK_LIVE(i) }
                    send(from, HACK, i, O_ADOPTED, y / 32)
                fi
            /* mover::send: the answer to a handoff. */
            :: kind == HACK ->
                if
                /* Finish the move this answers, not a later one (a room handed
                 * on, back, and on again has one incarnation but three moves). */
                :: slot[i] == S_MOVING && target[i] == from && !settling[i] && y == mid[i] ->
                    if
                    :: x == O_ADOPTED || x == O_DUP -> landed(i)
                    :: x == O_ABORTED -> reopen(i)
                    :: x == O_CONFLICT -> assert(false)   /* two rooms existed */
                    fi
                :: else -> skip
                fi
            /* control::abort: Placement::abort. */
            :: kind == ABORT ->
                if
                :: (slot[i] == S_LIVE || slot[i] == S_MOVING || slot[i] == S_MOVED) && room[i] == y ->
                    send(from, AREP, i, 1, 0)
                :: else -> aborted[i] = y; send(from, AREP, i, 0, 0)
                fi
            /* mover::settle. */
            :: kind == AREP ->
                if
                :: slot[i] == S_MOVING && settling[i] && target[i] == from ->
                    settling[i] = false;
                    if :: x == 1 -> landed(i) :: else -> reopen(i) fi
                :: else -> skip
                fi
            /* control::publish: publishes passed on after a move. */
            :: kind == PUBFWD -> apply_forward(i, x)
            fi
        fi
       }
    /* A member publishes (ws::on_text, publish::publish). */
    :: pubs < MAXPUB && slot[i] == S_LIVE ->
        d_step { pubs++; acked++; seq[i]++; CHECK_LIVE(i) }
    :: pubs < MAXPUB && slot[i] == S_MOVING ->
        d_step { pubs++; queued[i]++ }
    /* A claim round's answers time out (claim::ANSWER_TIMEOUT). An answer
     * that is only late is no different for safety (it is ignored, and the
     * round asks again), so the model times out only once something was
     * lost, which keeps the search on the paths that matter. */
    :: atomic {
        lost && slot[i] == S_ACQ && (A(i,0)/8 == H_WAITING || A(i,1)/8 == H_WAITING || A(i,2)/8 == H_WAITING) ->
        for (p : 0 .. NN-1) {
            if :: A(i,p) / 8 == H_WAITING -> A(i,p) = H_UNKNOWN*8 :: else -> skip fi
        }
        finish_round(i)
       }
    /* A handoff's answer is lost: settle it (mover::settle). */
    :: atomic {
        lost && slot[i] == S_MOVING && !settling[i] ->
        settling[i] = true;
        send(target[i], ABORT, i, 0, room[i])
       }
    /* The settlement's answer is lost too: ask again. */
    :: atomic {
        lost && slot[i] == S_MOVING && settling[i] && aborts[i] < MAXABORT ->
        aborts[i]++;
        send(target[i], ABORT, i, 0, room[i])
       }
    od
}

init {
    byte n;
    atomic {
        for (n : 0 .. NN-1) {
            slot[n] = S_NONE; target[n] = NONE; aborted[n] = NONE;
            V(n,0) = 1; O(n,0) = 0; V(n,1) = 1; O(n,1) = 0;
        }
        bepoch[0] = 1; bowner[0] = 0; bepoch[1] = 1; bowner[1] = 0;
        run Balancer(0); run Balancer(1);
        run Node(0); run Node(1); run Node(2)
    }
}
