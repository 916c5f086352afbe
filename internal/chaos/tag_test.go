//go:build !chaos

package chaos

const chaosTag = false
