package writer

import (
	"unicode/utf8"
)

// MaxIDBytes is the longest entity id.
const MaxIDBytes = 512

// ValidateCollection checks a collection name: ^[a-z][a-z0-9_]{0,62}$.
// Names starting with '_' are reserved and fail the same pattern.
func ValidateCollection(c string) error {
	if len(c) == 0 || len(c) > 63 {
		return invalid("collection", "must be 1 to 63 characters")
	}
	if c[0] < 'a' || c[0] > 'z' {
		return invalid("collection", "must start with a lower-case letter")
	}
	for i := 1; i < len(c); i++ {
		b := c[i]
		if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '_') {
			return invalid("collection", "may hold only a-z, 0-9 and _")
		}
	}
	return nil
}

// ValidateID checks an entity id: 1 to 512 bytes of UTF-8 without control
// characters.
func ValidateID(id string) error {
	if len(id) == 0 || len(id) > MaxIDBytes {
		return invalid("id", "must be 1 to %d bytes", MaxIDBytes)
	}
	if !utf8.ValidString(id) {
		return invalid("id", "must be valid UTF-8")
	}
	for _, r := range id {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return invalid("id", "must not contain control characters")
		}
	}
	return nil
}

func validateKey(collection, id string) error {
	if err := ValidateCollection(collection); err != nil {
		return err
	}
	return ValidateID(id)
}
