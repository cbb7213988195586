package main

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pgkeep/pgkeep/storage"
)

// checkScalarTypes refuses a YAML value that the decoder would convert
// silently: yaml.v3 stores 1.5 in an int field as 1, so `wal.prefetch: 1.5`
// became 1 without a word.
func checkScalarTypes(path string, data []byte, into any) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
		return nil // the decoder reports syntax errors
	}
	return walkScalars(path, doc.Content[0], reflect.TypeOf(into).Elem(), "")
}

func walkScalars(path string, n *yaml.Node, t reflect.Type, key string) error {
	switch {
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
		for i := 0; i+1 < len(n.Content); i += 2 {
			name := n.Content[i].Value
			f, ok := fieldByTag(t, name)
			if !ok {
				continue // unknown keys are the decoder's error
			}
			if err := walkScalars(path, n.Content[i+1], f.Type, joinKey(key, name)); err != nil {
				return err
			}
		}
	case n.Kind == yaml.SequenceNode && t.Kind() == reflect.Slice:
		for i, e := range n.Content {
			if err := walkScalars(path, e, t.Elem(), fmt.Sprintf("%s[%d]", key, i)); err != nil {
				return err
			}
		}
	case n.Kind == yaml.ScalarNode && isInt(t) && n.Tag != "!!int" && n.Tag != "!!null":
		return &configError{fmt.Sprintf("config %s: %s: %q is not a whole number (line %d)", path, key, n.Value, n.Line)}
	}
	return nil
}

// setKeys lists the keys a config file sets: the paths of its values that
// are not sections (a list such as daemon.jobs is one key).
func setKeys(data []byte, t reflect.Type) map[string]bool {
	var doc yaml.Node
	keys := map[string]bool{}
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
		return keys
	}
	var walk func(n *yaml.Node, t reflect.Type, key string)
	walk = func(n *yaml.Node, t reflect.Type, key string) {
		if n.Kind != yaml.MappingNode || t.Kind() != reflect.Struct || t == reflect.TypeOf(time.Duration(0)) {
			if key != "" {
				keys[key] = true
			}
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			name := n.Content[i].Value
			if f, ok := fieldByTag(t, name); ok {
				walk(n.Content[i+1], f.Type, joinKey(key, name))
			}
		}
	}
	walk(doc.Content[0], t, "")
	return keys
}

func isInt(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	case reflect.Int64:
		return t.String() != "time.Duration"
	}
	return false
}

func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func joinKey(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

// checkRepositoryURL refuses repository URLs pgkeep cannot open, as a
// configuration error (exit 2) rather than a failed operation. Each
// storage backend checks its own URLs (storage.RegisterURLCheck).
func checkRepositoryURL(s string) error { return storage.CheckURL(s) }
