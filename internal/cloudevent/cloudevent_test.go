package cloudevent_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/writethrough/writethrough/internal/cloudevent"
	"github.com/writethrough/writethrough/outbox"
)

func TestEncodeDecode(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 28, 12, 0, 0, 123456000, time.UTC)
	e := &outbox.Entry{
		EventID: uuid.MustParse("01890f2e-7b1c-7cc0-9f4e-1a2b3c4d5e6f"), Collection: "users", EntityID: "a/b",
		Version: 3, Op: outbox.OpPut, Data: []byte(`{"name": "Ada"}`), CommittedAt: at,
		Traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", Tracestate: "k=v",
	}
	m := cloudevent.Encode(e, "/writethrough", "wt")
	require.Equal(t, "wt.users.put", m.Subject)
	want := map[string]string{
		"ce-specversion": "1.0", "ce-id": e.EventID.String(), "ce-source": "/writethrough",
		"ce-type": "writethrough.entity.put", "ce-subject": "users/a/b", "ce-time": "2026-11-28T12:00:00.123456Z",
		"ce-entityversion": "3", "ce-traceparent": e.Traceparent, "ce-tracestate": "k=v",
		"content-type": "application/json", "Nats-Msg-Id": e.EventID.String(),
	}
	require.Len(t, m.Header, len(want))
	for k, v := range want {
		require.Equal(t, []string{v}, m.Header[k], k)
	}
	require.Equal(t, `{"collection":"users","id":"a/b","version":3,"data":{"name": "Ada"},"updated_at":"2026-11-28T12:00:00.123456Z"}`, string(m.Data))

	ev, err := cloudevent.Decode(m)
	require.NoError(t, err)
	require.Equal(t, "users", ev.Collection())
	require.Equal(t, "a/b", ev.EntityID())
	require.EqualValues(t, 3, ev.EntityVersion)
	require.False(t, ev.Deleted())

	d := &outbox.Entry{EventID: uuid.New(), Collection: "users", EntityID: "1", Version: 2, Op: outbox.OpDelete, CommittedAt: at}
	m = cloudevent.Encode(d, "/s", "p")
	require.Equal(t, "p.users.delete", m.Subject)
	require.NotContains(t, m.Header, "ce-traceparent")
	require.Contains(t, string(m.Data), `"data":null,"deleted":true`)
	ev, err = cloudevent.Decode(m)
	require.NoError(t, err)
	require.True(t, ev.Deleted())
	require.Greater(t, cloudevent.Size(m), int64(len(m.Data)))
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	good := cloudevent.Encode(&outbox.Entry{EventID: uuid.New(), Collection: "c", EntityID: "1", Version: 1, Op: outbox.OpPut, Data: []byte(`1`)}, "/s", "p")
	for _, tc := range []struct{ header, value string }{
		{"ce-specversion", "0.3"}, {"ce-id", ""}, {"ce-type", "x"}, {"ce-subject", "c1"}, {"ce-entityversion", "0"}, {"ce-entityversion", "x"},
	} {
		m := &nats.Msg{Subject: good.Subject, Header: nats.Header{}, Data: good.Data}
		for k, v := range good.Header {
			m.Header[k] = v
		}
		m.Header[tc.header] = []string{tc.value}
		_, err := cloudevent.Decode(m)
		require.ErrorIs(t, err, cloudevent.ErrNotEvent, "%s=%q", tc.header, tc.value)
	}
	_, err := cloudevent.Decode(&nats.Msg{})
	require.ErrorIs(t, err, cloudevent.ErrNotEvent)
}

func FuzzDecode(f *testing.F) {
	f.Add("1.0", "id", "writethrough.entity.put", "c/1", "3")
	f.Add("1.0", "", "writethrough.entity.delete", "c", "-1")
	f.Fuzz(func(t *testing.T, spec, id, typ, subject, version string) {
		m := &nats.Msg{Header: nats.Header{"ce-specversion": {spec}, "ce-id": {id}, "ce-source": {"/s"}, "ce-type": {typ}, "ce-subject": {subject}, "ce-time": {"t"}, "ce-entityversion": {version}}}
		ev, err := cloudevent.Decode(m)
		if err == nil && (ev.EntityVersion < 1 || ev.ID == "" || ev.Collection()+"/"+ev.EntityID() != subject) {
			t.Fatalf("accepted a bad event: %+v", ev)
		}
	})
}
