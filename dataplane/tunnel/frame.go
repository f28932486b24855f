package tunnel

import (
	"encoding/binary"
	"fmt"
)

// Wire format of kas.tunnel.v1. Every frame starts with a 12-byte header:
//
//	byte 0      type
//	byte 1      flags (none defined in v1; ignored)
//	bytes 2-3   reserved (ignored)
//	bytes 4-7   stream ID, big endian (0 for session frames)
//	bytes 8-11  value, big endian: payload length for DATA, a window
//	            delta for OPEN/ACCEPT/WINDOW, a code for RESET/GOAWAY/CLOSE,
//	            an opaque number for PING/PONG
//
// Only DATA carries a payload. A writer never puts more than MaxMessageSize
// bytes into one conn.Write, so a WebSocket read limit of MaxMessageSize
// always suffices; readers do not rely on frames being aligned to messages.
const (
	headerSize = 12

	// MaxMessageSize is the most a kas.tunnel.v1 peer writes in one
	// conn.Write (one WebSocket message). Readers must accept messages of
	// this size.
	MaxMessageSize = 1 << 20

	// maxDataLen bounds a DATA payload; a larger length is garbage.
	maxDataLen = MaxMessageSize - headerSize

	// InitialWindow is the credit each direction of a new stream starts
	// with, before OPEN/ACCEPT grow it: the opener may send this much before
	// the peer accepts the stream.
	InitialWindow = 64 << 10

	// maxWindow bounds a stream's credit; more is a protocol error.
	maxWindow = 1 << 30
)

type frameType uint8

const (
	typeData   frameType = iota // stream payload
	typeOpen                    // new stream from the sender; value = window delta
	typeAccept                  // the receiver's application accepted the stream; value = window delta
	typeWindow                  // more credit; value = delta
	typeFin                     // the sender will send no more data on the stream
	typeReset                   // abort the stream; value = resetCode
	typePing                    // value echoed in a PONG
	typePong                    // answer to PING
	typeGoAway                  // drain: open no new streams on this tunnel; value = code
	typeClose                   // the sender closes the tunnel now; nothing follows
	numFrameTypes
)

var typeNames = [numFrameTypes]string{"DATA", "OPEN", "ACCEPT", "WINDOW", "FIN", "RESET", "PING", "PONG", "GOAWAY", "CLOSE"}

func (t frameType) String() string {
	if t < numFrameTypes {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// resetCode says why a stream was reset.
type resetCode uint32

const (
	// codeClosed: the sender closed the stream and reads no more. Sent after
	// FIN, so data already delivered stays readable on the receiver.
	codeClosed resetCode = iota
	// codeCancel: the sender aborted the stream (Reset, or an open that
	// timed out or was cancelled).
	codeCancel
	// codeRefused: the receiver did not take a new stream (backlog full,
	// too many streams, out of buffer budget, going away). The receiving
	// application never saw it, so the opener may retry elsewhere.
	codeRefused
)

type header struct {
	typ frameType
	id  uint32
	val uint32
}

func (h header) String() string { return fmt.Sprintf("%v id=%d val=%d", h.typ, h.id, h.val) }

func appendHeader(b []byte, h header) []byte {
	b = append(b, byte(h.typ), 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, h.id)
	return binary.BigEndian.AppendUint32(b, h.val)
}

func parseHeader(b *[headerSize]byte) header {
	return header{
		typ: frameType(b[0]),
		id:  binary.BigEndian.Uint32(b[4:8]),
		val: binary.BigEndian.Uint32(b[8:12]),
	}
}
