package extender

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"sync"

	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// The wire: kube-scheduler sends every candidate node's name and takes back
// a reason for every rejected node, so at 5,000 nodes a request is 60 KB of
// names and an answer 700 KB of reasons. encoding/json spends more on that
// (a string allocated per name; a map built, its keys sorted by reflection
// and every reason escaped again per node) than the decision costs. Names
// are therefore read as substrings of one string, and answers written
// straight from the compact filterAnswer, each distinct reason escaped once,
// into a pooled buffer. Both produce what encoding/json would read back as
// the extender API's types; the tests and the fuzz target hold them to it.

// wireArgs is ExtenderArgs with its NodeNames read by nodeNameList; Pod and
// Nodes are the embedded upstream fields. Field names match as they do for
// ExtenderArgs (encoding/json ignores case).
type wireArgs struct {
	extenderv1.ExtenderArgs
	NodeNames *nodeNameList
}

// nodeNameList decodes a JSON array of strings into substrings of one copy
// of the array's text: one allocation for all names instead of one per name.
// Anything but plain strings (escapes, non-ASCII, other types) goes to
// encoding/json, whose answer and errors are then the ones given.
type nodeNameList []string

func (l *nodeNameList) UnmarshalJSON(data []byte) error {
	if names, ok := plainStrings(data); ok {
		*l = names
		return nil
	}
	return json.Unmarshal(data, (*[]string)(l))
}

// plainStrings parses a JSON array of strings whose characters are printable
// ASCII without escapes; ok is false for any other input.
func plainStrings(data []byte) (names []string, ok bool) {
	text := string(data)
	i := skipSpace(text, 0)
	if i == len(text) || text[i] != '[' {
		return nil, false
	}
	names = make([]string, 0, strings.Count(text, ",")+1)
	i = skipSpace(text, i+1)
	if i < len(text) && text[i] == ']' {
		return names, skipSpace(text, i+1) == len(text)
	}
	for {
		if i == len(text) || text[i] != '"' {
			return nil, false
		}
		end := i + 1
		for end < len(text) && plain(text[end]) {
			end++
		}
		if end == len(text) || text[end] != '"' {
			return nil, false
		}
		names = append(names, text[i+1:end])
		i = skipSpace(text, end+1)
		switch {
		case i < len(text) && text[i] == ',':
			i = skipSpace(text, i+1)
		case i < len(text) && text[i] == ']':
			return names, skipSpace(text, i+1) == len(text)
		default:
			return nil, false
		}
	}
}

func skipSpace(text string, i int) int {
	for i < len(text) && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r') {
		i++
	}
	return i
}

// plain: a byte that stands for itself inside a JSON string, both when read
// and when written by encoding/json (which escapes <, > and & for HTML).
func plain(c byte) bool {
	return c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
}

// appendString appends s as a JSON string.
func appendString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if !plain(s[i]) {
			quoted, _ := json.Marshal(s) // a string always marshals
			return append(buf, quoted...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

// appendJSON appends the answer as ExtenderFilterResult JSON.
func (a *filterAnswer) appendJSON(buf []byte) []byte {
	texts := make([][]byte, len(a.texts))
	for i, text := range a.texts {
		texts[i] = appendString(nil, text)
	}
	buf = append(buf, `{"Nodes":null,"NodeNames":[`...)
	first := true
	for i, v := range a.verdicts {
		if v.outcome == fits {
			if !first {
				buf = append(buf, ',')
			}
			first = false
			buf = appendString(buf, a.names[i])
		}
	}
	buf = append(buf, `],"FailedNodes":`...)
	buf = a.appendReasons(buf, short, texts)
	buf = append(buf, `,"FailedAndUnresolvableNodes":`...)
	buf = a.appendReasons(buf, unresolvable, texts)
	buf = append(buf, `,"Error":`...)
	buf = appendString(buf, a.err)
	return append(buf, '}')
}

// appendReasons appends the nodes of one outcome and their reasons as a
// JSON object. A name asked about twice (the scheduler never does) is
// written twice with the same verdict, which reads back as one entry.
func (a *filterAnswer) appendReasons(buf []byte, want outcome, texts [][]byte) []byte {
	buf = append(buf, '{')
	first := true
	for i, v := range a.verdicts {
		if v.outcome != want {
			continue
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = appendString(buf, a.names[i])
		buf = append(buf, ':')
		buf = append(buf, texts[v.text]...)
	}
	return append(buf, '}')
}

// appendPriorities appends scores as HostPriorityList JSON.
func appendPriorities(buf []byte, scores extenderv1.HostPriorityList) []byte {
	buf = append(buf, '[')
	for i, score := range scores {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"Host":`...)
		buf = appendString(buf, score.Host)
		buf = append(buf, `,"Score":`...)
		buf = strconv.AppendInt(buf, score.Score, 10)
		buf = append(buf, '}')
	}
	return append(buf, ']')
}

// buffers holds request and answer buffers between requests: at 5,000
// nodes each is hundreds of kilobytes.
var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}
