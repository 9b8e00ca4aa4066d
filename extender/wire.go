package extender

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"

	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// The wire: kube-scheduler sends every candidate node's name and takes back
// a reason for every rejected node, so at 5,000 nodes a request is 60 KB of
// names and an answer 700 KB of reasons. encoding/json spends more on that
// (a string allocated per name; a map built, its keys sorted by reflection
// and every reason escaped again per node) than the decision costs. Names
// are therefore read here and looked up in the node table as they are read
// (a known name costs no allocation: the table's copy is kept), and
// answers are written straight from the compact answers, each distinct
// reason escaped once, into a pooled buffer. What this reads equals what
// encoding/json reads, and what it writes reads back through encoding/json
// as the extender API's types: FuzzParseArgs and FuzzServer hold it to that.

// parseArgs decodes ExtenderArgs from body, which it may rewrite, with the
// node names looked up in table and written into refs' slices. The names'
// value (the bulk of a request) is read here; everything else, with the
// names' value replaced by null, by encoding/json. Anything this reading
// is not sure to read as encoding/json would (a key with escapes or
// non-ASCII, a name that is not a plain string, a body that is not an
// object) is decoded by encoding/json alone, whose answer and errors are
// then the ones given. hasNames is false where NodeNames is absent or null.
func parseArgs(body []byte, table *nodeTable, refs *nodeRefs) (args extenderv1.ExtenderArgs, hasNames bool, err error) {
	spans, hasNames, ok := readNames(body, table, refs)
	if !ok {
		return decodeSlowly(body, table, refs)
	}
	for i := len(spans) - 1; i >= 0; i-- {
		start, end := spans[i][0], spans[i][1]
		if end-start < len("null") {
			continue // [] is no work to read again
		}
		n := copy(body[start:], "null")
		n += copy(body[start+n:], body[end:])
		body = body[:start+n]
	}
	if err := json.Unmarshal(body, &args); err != nil {
		return args, false, err
	}
	args.NodeNames = nil // read above
	return args, hasNames, nil
}

// readNames finds every NodeNames member of the object body and reads the
// last one's names, looked up in table, into refs. ok is false where body
// is not an object of plain keys, or a NodeNames value is neither null nor
// an array of plain strings: then encoding/json must read it all.
func readNames(body []byte, table *nodeTable, refs *nodeRefs) (spans [][2]int, hasNames, ok bool) {
	if !scanMembers(body, func(key []byte, start, end int) {
		if bytes.EqualFold(key, []byte("NodeNames")) {
			spans = append(spans, [2]int{start, end})
		}
	}) {
		return nil, false, false
	}
	for i, span := range spans {
		value := body[span[0]:span[1]]
		if string(value) == "null" {
			hasNames = false
			continue
		}
		into := refs
		if i < len(spans)-1 {
			into = &nodeRefs{} // only checked: the last NodeNames wins
		}
		if !plainStrings(value, table, into) {
			return nil, false, false
		}
		hasNames = true
	}
	return spans, hasNames, true
}

// decodeSlowly is parseArgs by encoding/json alone.
func decodeSlowly(body []byte, table *nodeTable, refs *nodeRefs) (extenderv1.ExtenderArgs, bool, error) {
	var args extenderv1.ExtenderArgs
	if err := json.Unmarshal(body, &args); err != nil || args.NodeNames == nil {
		return args, false, err
	}
	refs.names = append(refs.names[:0], *args.NodeNames...)
	args.NodeNames = nil
	refs.lookUp(table)
	return args, true, nil
}

// lookUp fills nodes with the table's entry for each name.
func (r *nodeRefs) lookUp(table *nodeTable) {
	r.nodes = slices.Grow(r.nodes[:0], len(r.names))[:len(r.names)]
	for i, name := range r.names {
		r.nodes[i], _ = table.node(name)
	}
}

// scanMembers walks the members of the JSON object that is body, calling
// visit with each key and the span of its value. It checks the object's
// structure (braces, strings, colons, commas), not the values' insides,
// which encoding/json reads later. ok is false for anything else, and for
// keys other than plain ASCII.
func scanMembers(body []byte, visit func(key []byte, start, end int)) (ok bool) {
	return scanList(body, '{', '}', func(i int) int {
		key, next, ok := plainString(body, i)
		if !ok {
			return -1
		}
		i = skipSpace(body, next)
		if i == len(body) || body[i] != ':' {
			return -1
		}
		start := skipSpace(body, i+1)
		end := skipValue(body, start)
		if end >= 0 {
			visit(key, start, end)
		}
		return end
	})
}

// scanList walks a JSON object or array that is all of text: open, then
// elements separated by commas, then close, with spaces anywhere between.
// element reads the element at i and returns the index after it, or -1.
func scanList(text []byte, open, close byte, element func(i int) int) bool {
	i := skipSpace(text, 0)
	if i == len(text) || text[i] != open {
		return false
	}
	i = skipSpace(text, i+1)
	if i < len(text) && text[i] == close {
		return skipSpace(text, i+1) == len(text)
	}
	for {
		if i = element(i); i < 0 {
			return false
		}
		i = skipSpace(text, i)
		switch {
		case i < len(text) && text[i] == ',':
			i = skipSpace(text, i+1)
		case i < len(text) && text[i] == close:
			return skipSpace(text, i+1) == len(text)
		default:
			return false
		}
	}
}

// plainString reads a string of plain characters at body[i], returning its
// contents and the index after it.
func plainString(body []byte, i int) (contents []byte, next int, ok bool) {
	if i == len(body) || body[i] != '"' {
		return nil, 0, false
	}
	end := i + 1
	for end < len(body) && plain(body[end]) {
		end++
	}
	if end == len(body) || body[end] != '"' {
		return nil, 0, false
	}
	return body[i+1 : end], end + 1, true
}

// skipValue returns the index after the JSON value starting at body[i], or
// -1 when it does not end: strings end at their closing quote, objects and
// arrays at their matching bracket, other values at the next delimiter.
func skipValue(body []byte, i int) int {
	depth := 0
	for i < len(body) {
		c := body[i]
		switch {
		case c == '"':
			if i = skipString(body, i); i < 0 {
				return -1
			}
		case c == '{' || c == '[':
			depth++
			i++
		case c == '}' || c == ']':
			if depth == 0 {
				return i // the enclosing object's end: a value ran up to it
			}
			depth--
			i++
		case depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			return i
		default:
			i++
		}
		if depth == 0 && (c == '"' || c == '}' || c == ']') {
			return i
		}
	}
	if depth == 0 {
		return i
	}
	return -1
}

// skipString returns the index after the string starting at body[i], or -1.
func skipString(body []byte, i int) int {
	for i++; i < len(body); i++ {
		switch body[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// plainStrings parses a JSON array of plain strings into refs (reusing
// their room), each name looked up in table once, and the table's own copy
// of it kept where it holds the node, so that known names cost no
// allocation. It returns false for anything else.
func plainStrings(value []byte, table *nodeTable, refs *nodeRefs) bool {
	refs.names, refs.nodes = refs.names[:0], refs.nodes[:0]
	return scanList(value, '[', ']', func(i int) int {
		name, next, ok := plainString(value, i)
		if !ok {
			return -1
		}
		at, _ := table.nodeBytes(name)
		if at.node != nil {
			refs.names = append(refs.names, at.name)
		} else {
			refs.names = append(refs.names, string(name))
		}
		refs.nodes = append(refs.nodes, at)
		return next
	})
}

func skipSpace(text []byte, i int) int {
	for i < len(text) && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r') {
		i++
	}
	return i
}

// plain: a byte that stands for itself inside a JSON string, both when read
// and when written by encoding/json (which escapes <, > and & for HTML).
func plain(c byte) bool { return plainBytes[c] }

var plainBytes = func() (table [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		table[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return table
}()

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

// appendJSON appends the answer as HostPriorityList JSON.
func (a *priorityAnswer) appendJSON(buf []byte) []byte {
	buf = append(buf, '[')
	for i, name := range a.names {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"Host":`...)
		buf = appendString(buf, name)
		buf = append(buf, `,"Score":`...)
		buf = strconv.AppendInt(buf, a.parts[i].score(a.maxFree), 10)
		buf = append(buf, '}')
	}
	return append(buf, ']')
}
