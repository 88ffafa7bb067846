module github.com/kubernaut/kubernaut/examples/go

go 1.25.0

require (
	github.com/kubernaut/kubernaut/gen/go v0.0.0
	google.golang.org/grpc v1.83.2
	google.golang.org/protobuf v1.36.12
)

require (
	buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go v1.36.12-20260825204119-511051f7f437.2 // indirect
	golang.org/x/net v0.58.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	golang.org/x/text v0.41.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260526163538-3dc84a4a5aaa // indirect
)

// This checkout's generated module; outside it, require a released version instead.
replace github.com/kubernaut/kubernaut/gen/go => ../../gen/go
