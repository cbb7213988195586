package scheduler

import (
	"fmt"
	"strings"

	"github.com/pgkeep/pgkeep/ha"
)

// Policy says which member of a Patroni cluster runs a job.
type Policy string

const (
	// Primary runs the job on the leader.
	Primary Policy = "primary"
	// Replica runs it on a healthy streaming replica within the job's
	// maximum lag, and nowhere when there is none.
	Replica Policy = "replica"
	// PreferReplica runs it on such a replica, else on the leader.
	PreferReplica Policy = "prefer-replica"
)

// ParsePolicy checks a run_on value.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case Primary, Replica, PreferReplica:
		return p, nil
	}
	return "", fmt.Errorf("run_on %q is not primary, replica or prefer-replica", s)
}

// NoBackupTag is the Patroni tag that keeps a member from running jobs.
const NoBackupTag = "nobackup"

// Choose returns the member that should run a job under policy p, and why;
// "" (with the reason) when no member may run it. Every daemon reading the
// same view computes the same answer.
func Choose(cl ha.Cluster, p Policy, maxLag uint64) (member, reason string) {
	el, why := eligible(cl, p, maxLag)
	if len(el) == 0 {
		return "", why
	}
	return el[0].name, el[0].reason
}

// Eligible lists the members that may run a job under policy p, best
// first: the first is Choose's answer, the others take over when it does
// not run the job.
func Eligible(cl ha.Cluster, p Policy, maxLag uint64) []string {
	el, _ := eligible(cl, p, maxLag)
	names := make([]string, len(el))
	for i, c := range el {
		names[i] = c.name
	}
	return names
}

type candidate struct{ name, reason string }

func eligible(cl ha.Cluster, p Policy, maxLag uint64) ([]candidate, string) {
	leader, leaderWhy := leaderCandidate(cl)
	var replicas []candidate
	var skipped []string
	if cl.Leader != "" {
		for _, m := range cl.Members { // sorted by name: a stable order
			if m.Name == cl.Leader {
				continue
			}
			if why := replicaProblem(cl, m, maxLag); why != "" {
				skipped = append(skipped, m.Name+": "+why)
				continue
			}
			lag, _ := cl.Lag(m)
			replicas = append(replicas, candidate{m.Name, fmt.Sprintf("%s: streaming replica, %d bytes behind (max %d)", m.Name, lag, maxLag)})
		}
	}
	noReplica := "no healthy streaming replica within max_lag"
	if cl.Leader == "" {
		noReplica += " (no leader to measure lag against)"
	} else if len(skipped) > 0 {
		noReplica += " (" + strings.Join(skipped, "; ") + ")"
	}
	switch p {
	case Primary:
		if leader == nil {
			return nil, leaderWhy
		}
		return []candidate{*leader}, ""
	case Replica:
		return replicas, noReplica
	case PreferReplica:
		if leader != nil {
			l := *leader
			if len(replicas) == 0 {
				l.reason += "; " + noReplica
			}
			replicas = append(replicas, l)
		}
		return replicas, noReplica + "; " + leaderWhy
	}
	return nil, fmt.Sprintf("unknown policy %q", p)
}

func leaderCandidate(cl ha.Cluster) (*candidate, string) {
	if cl.Leader == "" {
		return nil, "no leader key (failover in progress or cluster down)"
	}
	m, ok := cl.LeaderMember()
	switch {
	case !ok:
		return nil, "leader " + cl.Leader + " has no member key"
	case m.Malformed:
		return nil, "leader " + cl.Leader + ": member key is not Patroni's JSON"
	case m.Role != "master" && m.Role != "primary" && m.Role != "standby_leader":
		return nil, fmt.Sprintf("leader %s: role %q", m.Name, m.Role)
	case m.State != "running":
		return nil, fmt.Sprintf("leader %s: state %q", m.Name, m.State)
	case m.Tag(NoBackupTag):
		return nil, "leader " + m.Name + " is tagged nobackup"
	}
	return &candidate{m.Name, m.Name + ": leader (" + m.Role + ")"}, ""
}

// replicaProblem says why m is not a healthy streaming replica within
// maxLag, "" when it is one.
func replicaProblem(cl ha.Cluster, m ha.Member, maxLag uint64) string {
	switch {
	case m.Malformed:
		return "member key is not Patroni's JSON"
	case m.Role != "replica":
		return fmt.Sprintf("role %q", m.Role)
	case m.State != "running" && m.State != "streaming":
		return fmt.Sprintf("state %q", m.State)
	case m.ReplicationState != "" && m.ReplicationState != "streaming":
		return fmt.Sprintf("replication state %q", m.ReplicationState)
	case m.Tag(NoBackupTag):
		return "tagged nobackup"
	}
	if lm, ok := cl.LeaderMember(); ok && lm.Timeline != 0 && m.Timeline != 0 && lm.Timeline != m.Timeline {
		return fmt.Sprintf("timeline %d, leader on %d", m.Timeline, lm.Timeline)
	}
	lag, ok := cl.Lag(m)
	if !ok {
		return "lag unknown"
	}
	if lag > maxLag {
		return fmt.Sprintf("%d bytes behind (max %d)", lag, maxLag)
	}
	return ""
}
