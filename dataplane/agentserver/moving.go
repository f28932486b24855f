package agentserver

import (
	"slices"
	"time"
)

// MovingWindow is how long after an agent's last tunnel on a node closed
// the node takes the agent for moving (ErrMoving) rather than gone.
const MovingWindow = 5 * time.Second

// departure is one agent whose last tunnel here closed.
type departure struct {
	agentID int64
	at      time.Time
}

// departedLocked records that agentID's last tunnel here closed at now,
// and forgets departures older than MovingWindow.
func (s *Server) departedLocked(agentID int64, now time.Time) {
	s.left[agentID] = now
	s.leftOrder = append(s.leftOrder, departure{agentID, now})
	n := 0
	for n < len(s.leftOrder) && now.Sub(s.leftOrder[n].at) > MovingWindow {
		if d := s.leftOrder[n]; s.left[d.agentID].Equal(d.at) {
			delete(s.left, d.agentID)
		}
		n++
	}
	if n > 0 {
		// Departures come and go in bursts (a node drained, a storm), so
		// copying the rest down happens rarely, not once per tunnel.
		s.leftOrder = slices.Delete(s.leftOrder, 0, n)
	}
}

// moving reports whether agentID's last tunnel here closed within
// MovingWindow of now.
func (s *Server) moving(agentID int64, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.left[agentID]
	return ok && now.Sub(at) <= MovingWindow
}
